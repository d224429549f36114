// goverse.js: the browser client of goverse's HTTP gate (an ES module, no build step, no
// dependencies). Calls are JSON over fetch; pushes arrive on one server-sent event stream per
// session (EventSource); when a gate fails or drains, the session moves to another gate with
// backoff (full jitter) and registers again under a new client id. See docs/browser.md.

/** Codes of the gate's JSON errors, by HTTP status, for bodies that are not the gate's JSON
 * (a proxy's error page, say). The gate itself always names its code. */
const CODE_BY_STATUS = {
  400: "INVALID_ARGUMENT",
  401: "UNAUTHENTICATED",
  403: "PERMISSION_DENIED",
  404: "NOT_FOUND",
  405: "UNIMPLEMENTED",
  409: "ALREADY_EXISTS",
  413: "RESOURCE_EXHAUSTED",
  429: "RESOURCE_EXHAUSTED",
  499: "CANCELLED",
  501: "UNIMPLEMENTED",
  503: "UNAVAILABLE",
  504: "DEADLINE_EXCEEDED",
};

/** The longest a browser timer waits: setTimeout takes a longer delay as 0. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** EventSource's readyState once it failed the stream for good: the gate answered, but not a
 * 200 event stream (a network error or a stream that ended leave it CONNECTING instead). */
const EVENTSOURCE_CLOSED = 2;

/** The longest deadline the gate takes (Goverse-Timeout-Ms, a uint32 of milliseconds). */
const MAX_TIMEOUT_MS = 2 ** 32 - 1;

/** How the session waits before it dials the next gate (the n-th retry in a row). */
export const DEFAULT_BACKOFF = Object.freeze({ initialMs: 250, maxMs: 10000, stableMs: 10000 });

/** An error of a call or of the session: `code` is the gRPC code name the gate sent
 * ("NOT_FOUND", ...), or "UNAVAILABLE" when the gate could not be reached (`httpStatus` 0),
 * or "DEADLINE_EXCEEDED" when the client's own deadline passed (`httpStatus` 0), or
 * "INTERNAL" when a success's body is not JSON, or for a create or delete not a JSON object
 * (`httpStatus` its status). */
export class GoverseError extends Error {
  constructor(code, message, httpStatus = 0) {
    super(`${code}: ${message}`);
    this.name = "GoverseError";
    this.code = code;
    this.detail = message;
    this.httpStatus = httpStatus;
  }
}

/** The delay before retry number `attempt` (0-based): uniform in [0, min(max, initial * 2^n)]
 * ("full jitter"), so that the pages a dead gate dropped do not all dial the next one at once. */
export function backoffDelay(attempt, backoff = DEFAULT_BACKOFF, random = Math.random) {
  const ceiling = Math.min(backoff.maxMs, backoff.initialMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/** The GoverseError an HTTP error response stands for: the gate's JSON `{code, message}`, or
 * the code of the status when the body is something else. */
export function errorFromResponse(status, bodyText) {
  try {
    const body = JSON.parse(bodyText);
    if (body && typeof body.code === "string") {
      return new GoverseError(body.code, String(body.message ?? ""), status);
    }
  } catch {
    // Not JSON: the status alone tells what happened.
  }
  const code = CODE_BY_STATUS[status] ?? (status >= 500 ? "INTERNAL" : "UNKNOWN");
  return new GoverseError(code, bodyText.slice(0, 200) || `HTTP ${status}`, status);
}

/** The JSON object an event of the gate carries, as `{data}`, or `{problem}` when its data is
 * not one (not JSON, not an object, or without a string in each of `fields`): the gate always
 * sends such an object, so anything else is a stream the session cannot use. */
function eventData(event, fields) {
  let data;
  try {
    data = JSON.parse(event.data);
  } catch {
    return { problem: "not JSON" };
  }
  if (data === null || typeof data !== "object" || Array.isArray(data)) {
    return { problem: "not a JSON object" };
  }
  const missing = fields.filter((field) => typeof data[field] !== "string");
  if (missing.length > 0) return { problem: `no string ${missing.join(", ")}` };
  return { data };
}

/** `promise`, or a rejection with `expired()` once `ms` have passed, whichever comes first. */
function within(promise, ms, expired) {
  let timer;
  const timeout = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(expired()), Math.min(MAX_TIMER_MS, Math.max(0, ms)));
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Why `timeoutMs` cannot be a deadline (not a number above 0, at most the largest the gate
 * takes), or null when it can. */
function badTimeout(timeoutMs) {
  if (typeof timeoutMs === "number" && timeoutMs > 0 && timeoutMs <= MAX_TIMEOUT_MS) return null;
  const shown = typeof timeoutMs === "string" ? JSON.stringify(timeoutMs) : String(timeoutMs);
  const range = `above 0, at most ${MAX_TIMEOUT_MS}`;
  return `timeoutMs must be a number of milliseconds ${range} (not ${shown})`;
}

function trimSlash(url) {
  return url.replace(/\/+$/, "");
}

function objectPath(type, id) {
  return `/v1/objects/${encodeURIComponent(type)}/${encodeURIComponent(id)}`;
}

/** A client of goverse gates over HTTP.
 *
 *   const goverse = new Goverse({ gates: ["http://127.0.0.1:7180"], token });
 *   goverse.onMessage = (type, message) => ...;
 *   await goverse.connect();               // a session: pushes, and calls as this client
 *   const reply = await goverse.call("ChatRoom", "lobby", "Join", { user: "ann" });
 *
 * Without `connect()`, calls are one-shot (no pushes): the gate gives each its own caller.
 */
export class Goverse {
  /**
   * @param {object} options
   * @param {string[]} options.gates base URLs of the gates ("http://host:port"), tried in turn
   * @param {string|(() => string|Promise<string>)} [options.token] bearer token, or a function
   *   asked for a fresh one on every registration and call
   * @param {number} [options.timeoutMs] default deadline of a call (sent as Goverse-Timeout-Ms)
   * @param {{initialMs: number, maxMs: number, stableMs: number}} [options.backoff]
   */
  constructor({ gates, token = null, timeoutMs = 10000, backoff = DEFAULT_BACKOFF } = {}) {
    // Options no client can use are a programming error: refused here, before any call.
    if (!Array.isArray(gates) || gates.length === 0) {
      throw new TypeError("Goverse needs at least one gate URL");
    }
    const bad = badTimeout(timeoutMs);
    if (bad) throw new TypeError(bad);
    this.backoff = { ...DEFAULT_BACKOFF, ...backoff };
    for (const field of ["initialMs", "maxMs", "stableMs"]) {
      const value = this.backoff[field];
      if (typeof value !== "number" || !Number.isFinite(value) || value < 0) {
        throw new TypeError(`backoff.${field} must be a finite number of milliseconds, 0 or more`);
      }
    }
    this.gates = gates.map(trimSlash);
    this.token = token;
    this.timeoutMs = timeoutMs;
    /** Called with (type, message, base64) for every pushed message: its full protobuf name
     * and its JSON; message null and base64 its bytes when no node describes the type. */
    this.onMessage = () => {};
    /** Called with ({clientId, gate, gateId}) on every registration, the first one included. */
    this.onRegistered = () => {};
    /** Called with (oldClientId, newClientId) when the session registered again elsewhere. */
    this.onReconnect = () => {};
    /** Called with ({gate, reason, retryInMs}) when the session lost its gate. */
    this.onDisconnect = () => {};
    this._gateIndex = 0;
    this._source = null;
    this._session = null; // {clientId, credential, gate, since} while registered
    this._previousClientId = null;
    this._attempt = 0;
    this._retryTimer = null;
    this._dialing = null; // the dial under way (token, then stream, until `registered`)
    this._dialTimer = null;
    this._state = "idle"; // idle -> connecting <-> registered; closed at the end
    this._waiters = [];
    this._refusals = new Map(); // gate -> GoverseError: its refusal of the last dial to it
    this._lastFailure = null; // why the session last lost (or failed to reach) a gate
  }

  /** "idle" (no session), "connecting", "registered" or "closed". */
  get state() {
    return this._state;
  }

  /** The gate the session is registered with (or the next one to dial). */
  get gate() {
    return this._session ? this._session.gate : this.gates[this._gateIndex];
  }

  /** The session's client id, null while it is not registered. */
  get clientId() {
    return this._session ? this._session.clientId : null;
  }

  /** Opens the session's event stream; resolves with the client id once registered. Rejects
   * after `timeoutMs` when no gate registered it (UNAVAILABLE), or sooner once every gate
   * refused the registration (their code: UNAUTHENTICATED ...) or the token function threw;
   * the session keeps trying either way. */
  connect({ timeoutMs = this.timeoutMs } = {}) {
    const bad = badTimeout(timeoutMs);
    if (bad) return Promise.reject(new GoverseError("INVALID_ARGUMENT", bad));
    if (this._state === "closed") {
      return Promise.reject(new GoverseError("FAILED_PRECONDITION", "the client is closed"));
    }
    if (this._state === "idle") {
      this._state = "connecting";
      this._dial();
    }
    return this._registered(timeoutMs).then((session) => session.clientId);
  }

  /** Ends the session and every retry; calls made after it fail. Idempotent. */
  close() {
    this._state = "closed";
    clearTimeout(this._retryTimer);
    this._endDial();
    this._closeSource();
    this._session = null;
    this._rejectWaiters(new GoverseError("CANCELLED", "the client was closed"));
  }

  /** Calls `method` of the object (`type`, `id`) with `request` (protobuf JSON); resolves with
   * the response's JSON. In a session, a call made while it reconnects waits (within the
   * call's deadline) for the new registration. */
  async call(type, id, method, request = {}, { timeoutMs = this.timeoutMs } = {}) {
    const path = `${objectPath(type, id)}/${encodeURIComponent(method)}`;
    return this._request("POST", path, request, timeoutMs);
  }

  /** Creates the object; resolves with whether it was created (false: it existed). */
  async create(type, id, { timeoutMs = this.timeoutMs } = {}) {
    const path = objectPath(type, id);
    const reply = await this._request("PUT", path, undefined, timeoutMs, { object: true });
    return Boolean(reply.created);
  }

  /** Deletes the object; resolves with whether it existed. */
  async delete(type, id, { timeoutMs = this.timeoutMs } = {}) {
    const path = objectPath(type, id);
    const reply = await this._request("DELETE", path, undefined, timeoutMs, { object: true });
    return Boolean(reply.deleted);
  }

  /** The object types the cluster serves: `{types: [{name, methods: [{name, requestType,
   * responseType}]}]}`. */
  async describe({ timeoutMs = this.timeoutMs } = {}) {
    return this._request("GET", "/v1/describe", undefined, timeoutMs);
  }

  // -- calls ---------------------------------------------------------------------------------

  /** `object`: the answer must be a JSON object (a create's or delete's), else INTERNAL. */
  async _request(verb, path, body, timeoutMs, { object = false } = {}) {
    // The gate would refuse such a Goverse-Timeout-Ms with INVALID_ARGUMENT: so does the client,
    // before sending anything.
    const bad = badTimeout(timeoutMs);
    if (bad) throw new GoverseError("INVALID_ARGUMENT", bad);
    if (this._state === "closed") {
      throw new GoverseError("FAILED_PRECONDITION", "the client is closed");
    }
    const deadline = Date.now() + timeoutMs;
    // A session's calls carry its identity, which only the gate that issued it accepts.
    const session = this._state === "idle" ? null : await this._registered(timeoutMs);
    const gate = session ? session.gate : this.gates[this._gateIndex];
    // Whole milliseconds: the gate refuses a deadline that is not ASCII digits.
    const left = Math.ceil(deadline - Date.now());
    const headers = { "Goverse-Timeout-Ms": String(Math.max(1, left)) };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (session) {
      headers["Goverse-Client-Id"] = session.clientId;
      headers["Goverse-Credential"] = session.credential;
    } else {
      // The deadline covers the wait for the token too: a token function that never answers
      // fails the call when its deadline passes, as anything else it waits for would.
      const late = `no token from the token function in ${timeoutMs} ms`;
      const token = await within(this._token(), deadline - Date.now(), () => {
        return new GoverseError("DEADLINE_EXCEEDED", late);
      });
      if (token) headers.Authorization = `Bearer ${token}`;
    }
    const abort = new AbortController();
    const wait = Math.min(MAX_TIMER_MS, Math.max(0, deadline - Date.now()));
    const timer = setTimeout(() => abort.abort(), wait);
    let response;
    let text;
    try {
      response = await fetch(gate + path, {
        method: verb,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: abort.signal,
      });
      text = await response.text();
    } catch (error) {
      if (abort.signal.aborted) {
        throw new GoverseError("DEADLINE_EXCEEDED", `no answer from ${gate} in ${timeoutMs} ms`);
      }
      // The gate is gone: the session moves on (the caller decides whether to retry: a call
      // may have run before the connection broke). A call of a session that has since ended
      // tells nothing of the current one (it may be on the same gate URL, or still dialing).
      if (session === this._session) this._gateFailed(gate, `call failed: ${error.message}`);
      throw new GoverseError("UNAVAILABLE", `${gate} could not be reached: ${error.message}`);
    } finally {
      clearTimeout(timer);
    }
    if (!response.ok) throw errorFromResponse(response.status, text);
    if (!text) return {};
    let reply;
    try {
      reply = JSON.parse(text);
    } catch {
      // A page of something between (a captive portal, a proxy) answered in the gate's place.
      // INTERNAL, as gRPC's own client answers a response it cannot parse.
      const shown = text.slice(0, 200);
      const detail = `the answer of ${gate} is not JSON: ${shown}`;
      throw new GoverseError("INTERNAL", detail, response.status);
    }
    if (object && (reply === null || typeof reply !== "object" || Array.isArray(reply))) {
      // `null` would make reading `created` a TypeError: every failure is a GoverseError.
      const detail = `the answer of ${gate} is not a JSON object: ${text.slice(0, 200)}`;
      throw new GoverseError("INTERNAL", detail, response.status);
    }
    return reply;
  }

  /** The bearer token: the string given, or what the token function gives now. A function
   * that throws (or whose promise rejects) is UNAUTHENTICATED, as gRPC fails a call whose
   * credentials cannot give their metadata; its error is the GoverseError's `cause`. */
  async _token() {
    if (typeof this.token !== "function") return this.token;
    try {
      return await this.token();
    } catch (error) {
      const failure = new GoverseError("UNAUTHENTICATED", `no token: ${error?.message ?? error}`);
      failure.cause = error;
      throw failure;
    }
  }

  /** Resolves with the session once registered; rejects after `timeoutMs`. */
  _registered(timeoutMs) {
    if (this._session) return Promise.resolve(this._session);
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject };
      const timer = setTimeout(() => {
        this._waiters = this._waiters.filter((other) => other !== waiter);
        const last = this._lastFailure ? ` (last: ${this._lastFailure})` : "";
        const detail = `no gate registered the session in ${timeoutMs} ms${last}`;
        reject(new GoverseError("UNAVAILABLE", detail));
      }, Math.min(MAX_TIMER_MS, timeoutMs));
      waiter.resolve = (session) => {
        clearTimeout(timer);
        resolve(session);
      };
      waiter.reject = (error) => {
        clearTimeout(timer);
        reject(error);
      };
      this._waiters.push(waiter);
    });
  }

  /** Rejects every pending connect() and every call waiting for a registration. */
  _rejectWaiters(error) {
    for (const waiter of this._waiters.splice(0)) waiter.reject(error);
  }

  // -- the session ---------------------------------------------------------------------------

  /** Registers the session with the current gate: asks for the token, opens the stream, and
   * waits for `registered`, all within the client's `timeoutMs` (a token function or a gate
   * that never answers fails the dial, and the session tries the next gate). */
  async _dial() {
    const gate = this.gates[this._gateIndex];
    const dial = { gate };
    this._endDial();
    this._dialing = dial;
    const bound = Math.min(MAX_TIMER_MS, this.timeoutMs);
    this._dialTimer = setTimeout(() => {
      if (this._dialing === dial) this._gateFailed(gate, `no registration in ${bound} ms`);
    }, bound);
    let url = `${gate}/v1/events`;
    let token;
    try {
      token = await this._token();
    } catch (error) {
      if (this._dialing !== dial) return;
      // No gate can take the session without a token: what waits for it learns why now (the
      // session keeps trying, asking for a token again).
      this._rejectWaiters(error);
      this._gateFailed(gate, error.detail);
      return;
    }
    // A dial given up (timed out, its gate failed by a call, the client closed) while it
    // awaited its token opens nothing.
    if (this._dialing !== dial) return;
    // EventSource cannot send headers: the gate takes the token as a query parameter too.
    if (token) url += `?access_token=${encodeURIComponent(token)}`;
    // Another dial may have opened a stream while this one awaited its token: one stream only
    // (an EventSource left open reconnects by itself forever).
    this._closeSource();
    const source = new EventSource(url);
    this._source = source;
    source.addEventListener("registered", (event) => this._onRegistered(source, gate, event));
    source.addEventListener("message", (event) => this._onPush(source, gate, event));
    source.addEventListener("draining", () => this._sourceFailed(source, gate, "gate draining"));
    // The token the session registered with expired: the gate ends the stream; the next dial
    // asks the token function for a fresh one.
    source.addEventListener("expired", (event) => {
      const { data } = eventData(event, []);
      const message = typeof data?.message === "string" ? data.message : "the token has expired";
      this._sourceFailed(source, gate, `token expired: ${message}`);
    });
    source.addEventListener("open", () => {
      dial.opened = true;
    });
    // EventSource would dial the same gate again by itself: we close it and pick the next gate.
    source.addEventListener("error", () => {
      if (source.readyState === EVENTSOURCE_CLOSED && !dial.opened && source === this._source) {
        this._learnRefusal(dial, url);
      } else {
        this._sourceFailed(source, gate, "event stream lost");
      }
    });
  }

  /** The gate answered the dial's stream with something else than events: a refusal (401
   * UNAUTHENTICATED, 429 RESOURCE_EXHAUSTED, 503 UNAVAILABLE while draining), which
   * EventSource does not show. The same request again, with fetch, reads it; then the dial
   * fails with it. An answer that is a stream this time is dropped at once (a registration
   * nobody uses, which the gate ends when it notices the closed connection). */
  async _learnRefusal(dial, url) {
    const abort = new AbortController();
    dial.probe = abort;
    let refusal = null;
    try {
      const headers = { Accept: "text/event-stream" };
      const response = await fetch(url, { headers, signal: abort.signal });
      if (!response.ok) refusal = errorFromResponse(response.status, await response.text());
    } catch {
      // Unreachable now, or its answer not readable by this page (CORS): nothing learnt.
    } finally {
      abort.abort();
    }
    if (this._dialing !== dial) return; // the dial ended meanwhile (timed out, closed)
    if (refusal) {
      this._gateFailed(dial.gate, `registration refused: ${refusal.message}`, refusal);
    } else {
      this._gateFailed(dial.gate, "event stream refused");
    }
  }

  _onRegistered(source, gate, event) {
    if (source !== this._source) return;
    const { data, problem } = eventData(event, ["clientId", "credential"]);
    if (problem) {
      this._sourceFailed(source, gate, `malformed registered event: ${problem}`);
      return;
    }
    const { clientId, credential, gateId = null } = data;
    this._endDial();
    this._refusals.clear();
    this._lastFailure = null;
    this._session = { clientId, credential, gate, gateId, since: Date.now() };
    this._state = "registered";
    const previous = this._previousClientId;
    this._previousClientId = clientId;
    for (const waiter of this._waiters.splice(0)) waiter.resolve(this._session);
    this._notify("onRegistered", { clientId, gate, gateId });
    if (previous !== null && previous !== clientId) this._notify("onReconnect", previous, clientId);
  }

  _onPush(source, gate, event) {
    if (source !== this._source) return;
    const { data, problem } = eventData(event, ["type"]);
    if (problem) {
      // A push the session cannot read is lost: like a broken stream, registering again
      // tells the page (onReconnect) to resynchronise.
      this._sourceFailed(source, gate, `malformed message event: ${problem}`);
      return;
    }
    const { type, message = null, base64 = null } = data;
    this._notify("onMessage", type, message, base64);
  }

  _sourceFailed(source, gate, reason) {
    if (source !== this._source) return; // an old stream's last words
    this._gateFailed(gate, reason);
  }

  /** The session's gate failed (its stream broke, it drains, a call to it could not connect,
   * or it refused the registration: `refusal`, its error): close the stream and dial the next
   * gate after a backoff. A failure of a gate the session has already left changes nothing.
   * Once every gate has refused, what waits for a registration rejects with the refusal. */
  _gateFailed(gate, reason, refusal = null) {
    if (this._state === "idle" || this._state === "closed") {
      // One-shot calls: the next call tries the next gate.
      if (this.gates[this._gateIndex] === gate) this._advance();
      return;
    }
    if (this.gates[this._gateIndex] !== gate || this._retryTimer !== null) return;
    const session = this._session;
    if (session && Date.now() - session.since >= this.backoff.stableMs) this._attempt = 0;
    this._endDial();
    this._closeSource();
    this._session = null;
    this._state = "connecting";
    this._advance();
    if (refusal) this._refusals.set(gate, refusal);
    else this._refusals.delete(gate);
    this._lastFailure = `${gate}: ${reason}`;
    const delay = backoffDelay(this._attempt, this.backoff);
    this._attempt += 1;
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      if (this._state === "connecting") this._dial();
    }, delay);
    this._notify("onDisconnect", { gate, reason, retryInMs: delay });
    // Every gate refused (a token none accepts, all full, all draining): waiting for their
    // registration is pointless until something changes; the session keeps trying.
    if (refusal && this.gates.every((each) => this._refusals.has(each))) {
      this._rejectWaiters(refusal);
    }
  }

  /** Calls the page's handler `name` with `args`. What it throws (or its promise rejects
   * with) is the page's bug, not the session's: reported with console.error, it changes
   * nothing here (the other handlers still run, the session goes on). */
  _notify(name, ...args) {
    const report = (error) => console.error(`goverse: ${name} failed:`, error);
    try {
      const result = this[name](...args);
      if (result && typeof result.then === "function") result.then(undefined, report);
    } catch (error) {
      report(error);
    }
  }

  /** Forgets the dial under way (a token it still awaits opens nothing) and its timer. */
  _endDial() {
    clearTimeout(this._dialTimer);
    this._dialTimer = null;
    this._dialing?.probe?.abort();
    this._dialing = null;
  }

  _advance() {
    this._gateIndex = (this._gateIndex + 1) % this.gates.length;
  }

  _closeSource() {
    if (this._source) {
      this._source.close();
      this._source = null;
    }
  }
}
