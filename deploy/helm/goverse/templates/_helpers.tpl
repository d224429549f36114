{{/*
Names, labels and the values every template shares. The node list, the etcd endpoints and the
stop budgets are computed here, once, so the gates, the nodes, the etcd members and NOTES.txt
agree on them.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "goverse.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name that prefixes every object: fullnameOverride, else <release>-<chart>, or the
release name alone when it already contains the chart name. At most 40 characters, so the
component names below and the node pods' names stay within the DNS label limit of 63.
*/}}
{{- define "goverse.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "goverse.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. Call with (dict "ctx" $ "component" "gate"); "" for none. */}}
{{- define "goverse.labels" -}}
helm.sh/chart: {{ include "goverse.chart" .ctx }}
{{ include "goverse.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: goverse
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Labels of a pod template: those of every object but helm.sh/chart, whose chart version would
change every pod template on a chart bump and so roll every pod for nothing. Call with
(dict "ctx" $ "component" "gate").
*/}}
{{- define "goverse.podLabels" -}}
{{- omit (include "goverse.labels" . | fromYaml) "helm.sh/chart" | toYaml }}
{{- end }}

{{/*
checksum/config of a pod template: the sha256 of a ConfigMap's data only, so that a change of
its labels (a chart bump changes helm.sh/chart) restarts no pod. Call with
(dict "ctx" $ "file" "/gate/configmap.yaml").
*/}}
{{- define "goverse.configChecksum" -}}
{{- (include (print .ctx.Template.BasePath .file) .ctx | fromYaml).data | toJson | sha256sum }}
{{- end }}

{{/* Labels that select the pods of one component. Call with (dict "ctx" $ "component" "gate"). */}}
{{- define "goverse.selectorLabels" -}}
app.kubernetes.io/name: {{ include "goverse.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/* Object names of the components. */}}
{{- define "goverse.node.fullname" -}}
{{- printf "%s-node" (include "goverse.fullname" .) }}
{{- end }}

{{- define "goverse.node.headlessName" -}}
{{- printf "%s-node-headless" (include "goverse.fullname" .) }}
{{- end }}

{{- define "goverse.gate.fullname" -}}
{{- printf "%s-gate" (include "goverse.fullname" .) }}
{{- end }}

{{- define "goverse.etcd.fullname" -}}
{{- printf "%s-etcd" (include "goverse.fullname" .) }}
{{- end }}

{{- define "goverse.etcd.headlessName" -}}
{{- printf "%s-etcd-headless" (include "goverse.fullname" .) }}
{{- end }}

{{- define "goverse.otelCollector.fullname" -}}
{{- printf "%s-otel-collector" (include "goverse.fullname" .) }}
{{- end }}

{{/* The ServiceAccount the pods run as. */}}
{{- define "goverse.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "goverse.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference: [<registry>/]<repository>, then @<digest> when a digest is set (it wins
over the tag: a digest names one build, a tag can be moved), else :<tag> (default: the
chart's appVersion). The registry is imageRegistry (a mirror of every image), else the
image's own. Call with (dict "image" .Values.gate.image "ctx" $).
*/}}
{{- define "goverse.image" -}}
{{- $registry := default .image.registry .ctx.Values.imageRegistry }}
{{- $repository := ternary (printf "%s/%s" $registry .image.repository) .image.repository (ne $registry "") }}
{{- if .image.digest }}
{{- printf "%s@%s" $repository .image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{/*
The stable DNS name of every node pod, comma-separated, with the port: the `--nodes` list of
gates and nodes, and the set each node's `--advertise` address is taken from.
*/}}
{{- define "goverse.node.addresses" -}}
{{- $sts := include "goverse.node.fullname" . }}
{{- $suffix := printf "%s.%s.svc.%s" (include "goverse.node.headlessName" .) .Release.Namespace .Values.clusterDomain }}
{{- $addresses := list }}
{{- range $i := until (int .Values.node.replicaCount) }}
{{- $addresses = append $addresses (printf "%s-%d.%s:%d" $sts $i $suffix (int $.Values.node.port)) }}
{{- end }}
{{- join "," $addresses }}
{{- end }}

{{/*
Ports of the bundled etcd members: clients (gates and nodes), peers (the other members), and
the plain-HTTP listener of /metrics, /health, /livez and /readyz (the probes).
*/}}
{{- define "goverse.etcd.clientPort" -}}2379{{- end }}
{{- define "goverse.etcd.peerPort" -}}2380{{- end }}
{{- define "goverse.etcd.metricsPort" -}}2381{{- end }}

{{/* The domain suffix of the bundled etcd members' stable DNS names. */}}
{{- define "goverse.etcd.domain" -}}
{{- printf "%s.%s.svc.%s" (include "goverse.etcd.headlessName" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{/*
`--initial-cluster` of the bundled etcd: every member's name (its pod name) and peer URL on
its stable DNS name, `<fullname>-etcd-<i>=http://<fullname>-etcd-<i>.<headless>...:2380`.
*/}}
{{- define "goverse.etcd.initialCluster" -}}
{{- $sts := include "goverse.etcd.fullname" . }}
{{- $domain := include "goverse.etcd.domain" . }}
{{- $members := list }}
{{- range $i := until (int .Values.etcd.replicaCount) }}
{{- $members = append $members (printf "%s-%d=http://%s-%d.%s:%s" $sts $i $sts $i $domain (include "goverse.etcd.peerPort" $)) }}
{{- end }}
{{- join "," $members }}
{{- end }}

{{/*
GOVERSE_ETCD_ENDPOINTS: the bundled etcd's client Service (it routes to ready members only),
or the configured endpoints of an existing cluster.
*/}}
{{- define "goverse.etcd.endpoints" -}}
{{- if .Values.etcd.bundled }}
{{- printf "%s.%s.svc.%s:%s" (include "goverse.etcd.fullname" .) .Release.Namespace .Values.clusterDomain (include "goverse.etcd.clientPort" .) }}
{{- else }}
{{- join "," .Values.etcd.endpoints }}
{{- end }}
{{- end }}

{{/*
How gates and nodes learn the cluster, for both ConfigMaps: the node list (static), or where
etcd is (etcd). With etcd nothing here depends on the node count, so scaling the nodes
changes no ConfigMap and restarts no pod.
*/}}
{{- define "goverse.membershipConfig" -}}
{{- if eq .Values.membership "etcd" }}
GOVERSE_ETCD_ENDPOINTS: {{ include "goverse.etcd.endpoints" . | quote }}
GOVERSE_ETCD_PREFIX: {{ .Values.etcd.prefix | quote }}
{{- else }}
GOVERSE_NODES: {{ include "goverse.node.addresses" . | quote }}
{{- end }}
{{- end }}

{{/*
Seconds in a duration value (`500ms`, `5s`, `1.5s`, `2m`, or a bare number of seconds, as the
schema's `duration` allows), as a float.
*/}}
{{- define "goverse.seconds" -}}
{{- $text := toString . }}
{{- if hasSuffix "ms" $text }}
{{- divf (trimSuffix "ms" $text | float64) 1000 }}
{{- else if hasSuffix "m" $text }}
{{- mulf (trimSuffix "m" $text | float64) 60 }}
{{- else }}
{{- trimSuffix "s" $text | float64 }}
{{- end }}
{{- end }}

{{/*
The node's own defaults of the settings the chart computes with, as the node declares them,
and the share of its shutdown budget a stopping node gets to leave the cluster (hand its
shards off) while it still serves: LEAVE_SHARE in goverse.server._service.
tests/unit/test_chart_settings.py checks each against the code.
*/}}
{{- define "goverse.nodeDefault.shutdownTimeout" -}}5s{{- end }}
{{- define "goverse.nodeDefault.handoffTimeout" -}}5s{{- end }}
{{- define "goverse.node.leaveShare" -}}0.6{{- end }}
{{- define "goverse.nodeDefault.leaseTtl" -}}10s{{- end }}
{{- define "goverse.nodeDefault.etcdTimeout" -}}3s{{- end }}
{{- define "goverse.nodeDefault.fenceMargin" -}}2s{{- end }}
{{- /* The shortest --lease-ttl gate and node accept (MIN_LEASE_TTL in
goverse.server._service_settings): keep-alives go every third of it. */}}
{{- define "goverse.minimum.leaseTtl" -}}2s{{- end }}

{{/* The node's `--handoff-timeout` in seconds (a float): node.config.handoffTimeout, or the
node's own default. */}}
{{- define "goverse.node.handoffSeconds" -}}
{{- include "goverse.seconds" (default (include "goverse.nodeDefault.handoffTimeout" .) .Values.node.config.handoffTimeout) }}
{{- end }}

{{/*
The smallest node shutdown budget (whole seconds) whose leave share covers the handoff
timeout: with etcd a stopping node waits up to the handoff timeout for the calls in flight on
its shards, and must do it within the leave share of its budget.
*/}}
{{- define "goverse.node.minimumShutdownSeconds" -}}
{{- divf (include "goverse.node.handoffSeconds" . | float64) (include "goverse.node.leaveShare" . | float64) | ceil | int }}
{{- end }}

{{/*
The node's shutdown budget in seconds: node.shutdownTimeoutSeconds, or when 0, the node's own
default (static) or, with etcd, (handoff timeout + 1 s) / leave share rounded up, and no less
than the node's own default: the wait for calls in flight on the shards it hands off plus a
second to deactivate their objects and release the shards, all within the leave share (10 s
with the default 5 s handoff timeout).
*/}}
{{- define "goverse.node.shutdownSeconds" -}}
{{- $own := include "goverse.seconds" (include "goverse.nodeDefault.shutdownTimeout" .) | float64 | ceil | int }}
{{- if .Values.node.shutdownTimeoutSeconds }}
{{- int .Values.node.shutdownTimeoutSeconds }}
{{- else if eq .Values.membership "etcd" }}
{{- $handoff := divf (addf (include "goverse.node.handoffSeconds" . | float64) 1) (include "goverse.node.leaveShare" . | float64) | ceil | int }}
{{- max $own $handoff }}
{{- else }}
{{- $own }}
{{- end }}
{{- end }}

{{/* A component's shutdown budget in seconds. Call with (dict "ctx" $ "component" "gate"). */}}
{{- define "goverse.shutdownSeconds" -}}
{{- if eq .component "node" }}
{{- include "goverse.node.shutdownSeconds" .ctx }}
{{- else }}
{{- int (index .ctx.Values .component).shutdownTimeoutSeconds }}
{{- end }}
{{- end }}

{{/*
A component's terminationGracePeriodSeconds: the value, or when 0, preStop + shutdown budget
+ a margin of 5. Call with (dict "ctx" $ "component" "node").
*/}}
{{- define "goverse.terminationGrace" -}}
{{- $c := index .ctx.Values .component }}
{{- if $c.terminationGracePeriodSeconds }}
{{- int $c.terminationGracePeriodSeconds }}
{{- else }}
{{- add (int $c.preStopSleepSeconds) (include "goverse.shutdownSeconds" . | int) 5 }}
{{- end }}
{{- end }}

{{/*
"true" when a component may run more than one pod (its replica count, or its autoscaler's
maximum), else empty: PodDisruptionBudgets exist only then. Call with (dict "ctx" $
"component" "gate").
*/}}
{{- define "goverse.multiReplica" -}}
{{- $c := index .ctx.Values .component }}
{{- $most := ternary $c.autoscaling.maxReplicas $c.replicaCount $c.autoscaling.enabled }}
{{- if gt (int $most) 1 }}true{{- end }}
{{- end }}

{{/* The address of the gate Service inside the cluster. */}}
{{- define "goverse.gate.address" -}}
{{- printf "%s.%s.svc.%s:%d" (include "goverse.gate.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.gate.service.port) }}
{{- end }}

{{/* OTEL_TRACES_EXPORTER after resolving the automatic choice (empty value). */}}
{{- define "goverse.tracing.exporter" -}}
{{- if .Values.tracing.exporter }}
{{- .Values.tracing.exporter }}
{{- else if or .Values.tracing.otlpEndpoint .Values.otelCollector.enabled }}
{{- "otlp" }}
{{- else }}
{{- "none" }}
{{- end }}
{{- end }}

{{/* OTEL_EXPORTER_OTLP_ENDPOINT: the configured one, else the bundled collector's, else empty. */}}
{{- define "goverse.tracing.endpoint" -}}
{{- if .Values.tracing.otlpEndpoint }}
{{- .Values.tracing.otlpEndpoint }}
{{- else if .Values.otelCollector.enabled }}
{{- printf "http://%s.%s.svc.%s:4317" (include "goverse.otelCollector.fullname" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}
{{- end }}

{{/*
Environment shared by gates and nodes, for their ConfigMaps: logging, metrics and the OTEL_*
variables. Call with (dict "ctx" $ "service" "goverse-gate").
*/}}
{{- define "goverse.sharedConfig" -}}
{{- $v := .ctx.Values }}
GOVERSE_LOG_LEVEL: {{ $v.logging.level | quote }}
GOVERSE_LOG_FORMAT: {{ $v.logging.format | quote }}
GOVERSE_METRICS_PORT: {{ ternary (toString (int $v.metrics.port)) "off" $v.metrics.enabled | quote }}
OTEL_SERVICE_NAME: {{ .service | quote }}
OTEL_TRACES_EXPORTER: {{ include "goverse.tracing.exporter" .ctx | quote }}
{{- with include "goverse.tracing.endpoint" .ctx }}
OTEL_EXPORTER_OTLP_ENDPOINT: {{ . | quote }}
OTEL_EXPORTER_OTLP_PROTOCOL: "grpc"
{{- end }}
OTEL_TRACES_SAMPLER: {{ $v.tracing.sampler | quote }}
{{- with $v.tracing.samplerArg }}
OTEL_TRACES_SAMPLER_ARG: {{ . | quote }}
{{- end }}
{{- end }}

{{/*
GOVERSE_* variables of a component's `config` values: camelCase key -> GOVERSE_UPPER_SNAKE;
empty strings and numbers of 0 (the service's own default: every count refuses 0) are left
out. A string is passed whenever set: "0" is a duration some settings take
(--rebalance-delay, --stable-after).
*/}}
{{- define "goverse.flagConfig" -}}
{{- range $key, $value := . }}
{{- /* numbers arrive as float64: int64 keeps 1000000 from rendering as 1e+06 */}}
{{- $text := ternary $value (toString (int64 $value)) (kindIs "string" $value) }}
{{- if and $text (or (kindIs "string" $value) (ne $text "0")) }}
GOVERSE_{{ $key | snakecase | upper }}: {{ $text | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
"true" when a value given as a string is zero ("0", "0s", "0.0", "0MiB"), else empty. Of the
settings a string can set, only these take 0 (goverse.validate refuses it for the others, as
the services do at start): the node's --rebalance-delay, the gate's --stable-after, and the
store's --idle-timeout (never).
*/}}
{{- define "goverse.isZero" -}}
{{- if and (kindIs "string" .) (regexMatch "^0+(\\.0+)? *[A-Za-z]*$" .) }}true{{- end }}
{{- end }}
{{- define "goverse.zeroTaken" -}}rebalanceDelay,stableAfter{{- end }}

{{/* goverse's demo object modules, which the node image carries (node.demoObjects). */}}
{{- define "goverse.demoObjects" -}}goverse.examples.counter,goverse.examples.chat{{- end }}

{{/* GOVERSE_OBJECTS: node.objects, then the demo modules with node.demoObjects. */}}
{{- define "goverse.node.objects" -}}
{{- $objects := .Values.node.objects }}
{{- if .Values.node.demoObjects }}
{{- $objects = concat $objects (splitList "," (include "goverse.demoObjects" .)) }}
{{- end }}
{{- $objects | uniq | join "," }}
{{- end }}

{{/* "true" when the nodes host the demo Counter (the helm test calls it), else empty. */}}
{{- define "goverse.node.hostsCounter" -}}
{{- if or .Values.node.demoObjects (has "goverse.examples.counter" .Values.node.objects) }}true{{- end }}
{{- end }}

{{/*
The node's state store. The password Secret's key is mounted as one file in its own
directory: a path of the chart's choosing, so GOVERSE_STORE_PASSWORD_FILE never depends on
the key's name.
*/}}
{{- define "goverse.store.passwordDir" -}}/etc/goverse/store{{- end }}
{{- define "goverse.store.passwordFile" -}}{{ include "goverse.store.passwordDir" . }}/password{{- end }}

{{/* "true" when the nodes have a store (its URL in values or in a Secret), else empty. */}}
{{- define "goverse.store.enabled" -}}
{{- if or .Values.store.url .Values.store.existingSecret }}true{{- end }}
{{- end }}

{{/*
"true" when the store may be PostgreSQL: a postgresql:// URL, or a URL in a Secret (which
the chart cannot read; the node checks that one itself), else empty.
*/}}
{{- define "goverse.store.mayBePostgres" -}}
{{- if or .Values.store.existingSecret (hasPrefix "postgres" .Values.store.url) }}true{{- end }}
{{- end }}

{{/*
Environment variables every gate and node container gets from the downward API, and the
resource attributes built from them. $(VAR) references are expanded by the kubelet.
*/}}
{{- define "goverse.podEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- $attributes := list "k8s.pod.name=$(POD_NAME)" "k8s.namespace.name=$(POD_NAMESPACE)" "service.instance.id=$(POD_NAME)" }}
{{- range $key, $value := .Values.tracing.resourceAttributes }}
{{- $attributes = append $attributes (printf "%s=%s" $key (toString $value)) }}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attributes | quote }}
{{- end }}

{{/*
topologySpreadConstraints with the component's selector filled in where none is given.
Call with (dict "ctx" $ "component" "gate" "constraints" .Values.gate.topologySpreadConstraints).
*/}}
{{- define "goverse.topologySpread" -}}
{{- $selector := include "goverse.selectorLabels" . | fromYaml }}
{{- range .constraints }}
{{- $constraint := deepCopy . }}
{{- if not $constraint.labelSelector }}
{{- $_ := set $constraint "labelSelector" (dict "matchLabels" $selector) }}
{{- end }}
- {{ toYaml $constraint | nindent 2 | trim }}
{{- end }}
{{- end }}

{{/* The /tmp emptyDir volume of every pod. */}}
{{- define "goverse.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpVolume.sizeLimit }}
{{- end }}

{{/*
The TCP port of each endpoint of a list (`host:port`, `http://host:port`), deduplicated; a
missing port is `default`. Call with (dict "endpoints" (list ...) "default" 2379).
*/}}
{{- define "goverse.endpointPorts" -}}
{{- $ports := list }}
{{- range .endpoints }}
{{- $hostPort := regexReplaceAll "^[A-Za-z][A-Za-z0-9+.-]*://" (toString .) "" | regexReplaceAll "[/?].*$" "" }}
{{- $port := regexFind "[0-9]+$" (regexFind ":[0-9]+$" $hostPort) }}
{{- $ports = append $ports (int (default (toString $.default) $port)) }}
{{- end }}
{{- $ports | uniq | toJson }}
{{- end }}

{{/* The PostgreSQL store's ports: those of store.url's hosts, or networkPolicy.egress.storePort
for a URL kept in a Secret, which the chart cannot read. */}}
{{- define "goverse.store.ports" -}}
{{- if .Values.store.existingSecret }}
{{- list (int .Values.networkPolicy.egress.storePort) | toJson }}
{{- else }}
{{- $authority := regexReplaceAll "^[A-Za-z]+://([^/?]*).*$" .Values.store.url "${1}" | regexReplaceAll "^.*@" "" }}
{{- include "goverse.endpointPorts" (dict "endpoints" (splitList "," $authority) "default" 5432) }}
{{- end }}
{{- end }}

{{/*
Egress rules of a gate or node pod (networkPolicy.egress): DNS, the node port of this
release's nodes (gates forward calls, nodes call objects on other nodes), etcd with
membership etcd (the bundled members, or anywhere on the ports of etcd.endpoints, or
networkPolicy.egress.etcdTo), the PostgreSQL store from nodes, the OTLP endpoint when traces
are exported over OTLP, then networkPolicy.egress.extra. Call with (dict "ctx" $ "component"
"node").
*/}}
{{- define "goverse.egressRules" -}}
{{- $v := .ctx.Values }}
{{- $e := $v.networkPolicy.egress }}
# DNS: the node and etcd names, the store's and the OTLP endpoint's hosts.
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
  {{- with $e.dnsTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
# The nodes' gRPC port: {{ ternary "calls between objects on different nodes" "forwarded calls and RegisterGate streams" (eq .component "node") }}.
- to:
    - podSelector:
        matchLabels:
          {{- include "goverse.selectorLabels" (dict "ctx" .ctx "component" "node") | nindent 10 }}
  ports:
    - port: {{ $v.node.port }}
      protocol: TCP
{{- if eq $v.membership "etcd" }}
# etcd: membership and shard ownership.
{{- if $v.etcd.bundled }}
- to:
    - podSelector:
        matchLabels:
          {{- include "goverse.selectorLabels" (dict "ctx" .ctx "component" "etcd") | nindent 10 }}
  ports:
    - port: {{ include "goverse.etcd.clientPort" .ctx }}
      protocol: TCP
{{- else }}
- ports:
    {{- range include "goverse.endpointPorts" (dict "endpoints" $v.etcd.endpoints "default" 2379) | fromJsonArray }}
    - port: {{ int . }}
      protocol: TCP
    {{- end }}
  {{- with $e.etcdTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}
{{- if and (eq .component "node") (include "goverse.store.mayBePostgres" .ctx) }}
# The PostgreSQL store.
- ports:
    {{- range include "goverse.store.ports" .ctx | fromJsonArray }}
    - port: {{ int . }}
      protocol: TCP
    {{- end }}
  {{- with $e.storeTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- if eq (include "goverse.tracing.exporter" .ctx) "otlp" }}
# The OTLP endpoint of the traces.
{{- if $v.otelCollector.enabled }}
- to:
    - podSelector:
        matchLabels:
          {{- include "goverse.selectorLabels" (dict "ctx" .ctx "component" "otel-collector") | nindent 10 }}
  ports:
    - port: otlp-grpc
      protocol: TCP
{{- else }}
- ports:
    {{- range include "goverse.endpointPorts" (dict "endpoints" (list $v.tracing.otlpEndpoint) "default" 4317) | fromJsonArray }}
    - port: {{ int . }}
      protocol: TCP
    {{- end }}
  {{- with $e.otlpTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}
{{- with index $e.extra .component }}
# networkPolicy.egress.extra.{{ $.component }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Checks of combinations the schema cannot express; `fail` stops install, upgrade, template
and lint with the reason.
*/}}
{{- define "goverse.validate" -}}
{{- $v := .Values }}
{{- $http := $v.gate.http }}
{{- if $http.enabled }}
{{- $taken := list (int $v.gate.port) }}
{{- if $v.metrics.enabled }}{{- $taken = append $taken (int $v.metrics.port) }}{{- end }}
{{- if $v.tls.enabled }}{{- $taken = append $taken (int $v.gate.healthPort) }}{{- end }}
{{- if has (int $http.port) $taken }}
{{- fail (printf "gate.http.port (%d) must differ from gate.port, gate.healthPort and metrics.port" (int $http.port)) }}
{{- end }}
{{- /* Both are ports of the one gate Service, which cannot list a port number twice. */}}
{{- if eq (int $http.port) (int $v.gate.service.port) }}
{{- fail (printf "gate.http.port (%d) must differ from gate.service.port: both are ports of the gate Service" (int $http.port)) }}
{{- end }}
{{- end }}
{{- if $http.ingress.enabled }}
{{- if not $http.enabled }}
{{- fail "gate.http.ingress.enabled needs gate.http.enabled: the Ingress sends to the gates' HTTP port" }}
{{- end }}
{{- if not $http.ingress.hosts }}
{{- fail "gate.http.ingress.enabled needs gate.http.ingress.hosts: the host names browsers and clients use" }}
{{- end }}
{{- if not $http.ingress.tlsSecretName }}
{{- fail "gate.http.ingress.enabled needs gate.http.ingress.tlsSecretName: the gates serve plain HTTP, so TLS is the controller's" }}
{{- end }}
{{- end }}
{{- range $component := list "gate" "node" }}
{{- $c := index $v $component }}
{{- $shutdown := include "goverse.shutdownSeconds" (dict "ctx" $ "component" $component) | int }}
{{- $grace := include "goverse.terminationGrace" (dict "ctx" $ "component" $component) | int }}
{{- $needed := add $c.preStopSleepSeconds $shutdown 2 }}
{{- if lt $grace (int $needed) }}
{{- fail (printf "%s.terminationGracePeriodSeconds=%d is too short: it must cover %s.preStopSleepSeconds (%d) + the shutdown budget (%d s) + a margin of at least 2 s (recommended 5 s), i.e. at least %d" $component $grace $component (int $c.preStopSleepSeconds) $shutdown (int $needed)) }}
{{- end }}
{{- range $key, $value := $c.config }}
{{- if and (include "goverse.isZero" $value) (not (has $key (splitList "," (include "goverse.zeroTaken" $)))) }}
{{- fail (printf "%s.config.%s (%s) is zero, which the %s refuses at start: leave it empty for the %s's own default" $component $key $value $component $component) }}
{{- end }}
{{- end }}
{{- /* The services refuse to start unless --lease-ttl is at least their shortest, and
--etcd-timeout (and the node's --fence-margin) is under half of it; the defaults are shared
by gate and node. */}}
{{- $lease := include "goverse.seconds" (default (include "goverse.nodeDefault.leaseTtl" $) $c.config.leaseTtl) | float64 }}
{{- $shortest := include "goverse.minimum.leaseTtl" $ }}
{{- if lt $lease (include "goverse.seconds" $shortest | float64) }}
{{- fail (printf "%s.config.leaseTtl (%s) must be at least %s: the %s refuses a shorter lease at start (its keep-alives go every third of it)" $component $c.config.leaseTtl $shortest $component) }}
{{- end }}
{{- $under := dict "etcdTimeout" (default (include "goverse.nodeDefault.etcdTimeout" $) $c.config.etcdTimeout) }}
{{- if eq $component "node" }}
{{- $_ := set $under "fenceMargin" (default (include "goverse.nodeDefault.fenceMargin" $) $c.config.fenceMargin) }}
{{- end }}
{{- range $key, $duration := $under }}
{{- if ge (mulf (include "goverse.seconds" $duration | float64) 2) $lease }}
{{- fail (printf "%s.config.%s (%s) must be under half of %s.config.leaseTtl (%s): the %s refuses to start otherwise" $component $key $duration $component (default (include "goverse.nodeDefault.leaseTtl" $) $c.config.leaseTtl) $component) }}
{{- end }}
{{- end }}
{{- if and $v.metrics.enabled (eq (int $c.port) (int $v.metrics.port)) }}
{{- fail (printf "%s.port and metrics.port are both %d; they must differ" $component (int $c.port)) }}
{{- end }}
{{- $scaling := $c.autoscaling }}
{{- if $scaling.enabled }}
{{- if gt (int $scaling.minReplicas) (int $scaling.maxReplicas) }}
{{- fail (printf "%s.autoscaling.minReplicas (%d) is above %s.autoscaling.maxReplicas (%d)" $component (int $scaling.minReplicas) $component (int $scaling.maxReplicas)) }}
{{- end }}
{{- if not (($c.resources).requests).cpu }}
{{- fail (printf "%s.autoscaling scales on CPU use in percent of the request: set %s.resources.requests.cpu" $component $component) }}
{{- end }}
{{- end }}
{{- end }}
{{- range $name, $image := dict "gate" $v.gate.image "node" $v.node.image "etcd" $v.etcd.image "otelCollector" $v.otelCollector.image }}
{{- $registry := default $image.registry $v.imageRegistry }}
{{- $first := first (splitList "/" $image.repository) }}
{{- if and $registry (contains "/" $image.repository) (or (contains "." $first) (contains ":" $first) (eq $first "localhost")) }}
{{- fail (printf "%s.image.repository %s starts with a registry host (%s) and a registry (%s) is set too, which would make %s/%s: put the host in %s.image.registry and the path in repository" $name $image.repository $first $registry $registry $image.repository $name) }}
{{- end }}
{{- end }}
{{- include "goverse.validateMembership" . }}
{{- include "goverse.validateStore" . }}
{{- if and $v.metrics.serviceMonitor.enabled (not $v.metrics.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled: there is nothing to scrape" }}
{{- end }}
{{- $exporter := include "goverse.tracing.exporter" . }}
{{- if and (eq $exporter "otlp") (not (include "goverse.tracing.endpoint" .)) }}
{{- fail "tracing.exporter=otlp needs tracing.otlpEndpoint or otelCollector.enabled=true" }}
{{- end }}
{{- if and $v.otelCollector.enabled (ne $exporter "otlp") }}
{{- fail (printf "otelCollector.enabled with tracing.exporter=%s: the collector would receive no spans; use otlp (or leave tracing.exporter empty)" $exporter) }}
{{- end }}
{{- if and $v.otelCollector.enabled $v.tracing.otlpEndpoint }}
{{- fail "otelCollector.enabled and tracing.otlpEndpoint are both set: the gates and nodes would not send to the collector; set one of them" }}
{{- end }}
{{- $svc := $v.gate.service }}
{{- if eq $svc.type "ClusterIP" }}
{{- if $svc.nodePort }}
{{- fail "gate.service.nodePort needs gate.service.type NodePort or LoadBalancer" }}
{{- end }}
{{- if $svc.externalTrafficPolicy }}
{{- fail "gate.service.externalTrafficPolicy needs gate.service.type NodePort or LoadBalancer" }}
{{- end }}
{{- end }}
{{- $ingress := $v.gate.ingress }}
{{- if and $ingress.enabled (not $ingress.hosts) }}
{{- fail "gate.ingress.enabled needs gate.ingress.hosts: the host names clients dial" }}
{{- end }}
{{- if and $ingress.enabled (not $ingress.tlsSecretName) }}
{{- fail "gate.ingress.enabled needs gate.ingress.tlsSecretName: clients reach the gates through the Ingress with TLS only (gRPC needs HTTP/2, which ingress controllers offer with TLS), so name the kubernetes.io/tls Secret of gate.ingress.hosts" }}
{{- end }}
{{- /* ingress-nginx speaks to the gates as the annotation says (upper-cased, as it reads it):
GRPCS reaches a TLS port only, GRPC a plaintext one, anything else is no gRPC at all. */}}
{{- $protocol := index $ingress.annotations "nginx.ingress.kubernetes.io/backend-protocol" }}
{{- if and $ingress.enabled $protocol }}
{{- $served := ternary "GRPCS" "GRPC" $v.tls.enabled }}
{{- if ne (upper (trim $protocol)) $served }}
{{- fail (printf "gate.ingress.annotations: nginx.ingress.kubernetes.io/backend-protocol is %s: the gates serve %s, so use %s" $protocol (ternary "clients TLS (tls.enabled)" "plaintext gRPC (tls.enabled=false)" $v.tls.enabled) $served) }}
{{- end }}
{{- end }}
{{- if and $v.gate.grpcRoute.enabled (not $v.gate.grpcRoute.parentRefs) }}
{{- fail "gate.grpcRoute.enabled needs gate.grpcRoute.parentRefs: the Gateway listener (HTTPS, terminating TLS) the route attaches to" }}
{{- end }}
{{- if and $svc.loadBalancerSourceRanges (ne $svc.type "LoadBalancer") }}
{{- fail "gate.service.loadBalancerSourceRanges needs gate.service.type LoadBalancer" }}
{{- end }}
{{- if not (or $v.node.objects $v.node.demoObjects) }}
{{- fail "node.objects is empty and node.demoObjects is off, so the nodes would host nothing: set node.objects to the modules of your objects (in an image built FROM goverse-node, node.image), or node.demoObjects=true to try the chart with goverse's Counter and ChatRoom" }}
{{- end }}
{{- $longest := printf "%s-%d" (include "goverse.node.fullname" .) (sub (int $v.node.replicaCount) 1) }}
{{- if gt (len $longest) 63 }}
{{- fail (printf "the node pod name %s is longer than 63 characters; use a shorter release name or fullnameOverride" $longest) }}
{{- end }}
{{- /* Last: with TLS on by default, a release without certificates fails here only when
everything else is right. */}}
{{- include "goverse.validateSecurity" . }}
{{- end }}

{{/* Checks of the membership values: static or etcd, bundled or external, and scaling. */}}
{{- define "goverse.validateMembership" -}}
{{- $v := .Values }}
{{- $etcd := $v.etcd }}
{{- if eq $v.membership "etcd" }}
{{- if and $etcd.bundled $etcd.endpoints }}
{{- fail "membership etcd: set etcd.bundled=true (an etcd deployed with the chart) or etcd.endpoints (an existing cluster), not both" }}
{{- end }}
{{- if not (or $etcd.bundled $etcd.endpoints) }}
{{- fail "membership etcd needs an etcd: set etcd.bundled=true to deploy one with the chart, or etcd.endpoints to the client endpoints of an existing cluster" }}
{{- end }}
{{- if and $etcd.bundled (eq (mod (int $etcd.replicaCount) 2) 0) }}
{{- fail (printf "etcd.replicaCount=%d: an etcd cluster needs an odd number of members (3 tolerates the loss of one, 5 of two; an even count tolerates no more than one fewer)" (int $etcd.replicaCount)) }}
{{- end }}
{{- $shutdown := include "goverse.node.shutdownSeconds" . | int }}
{{- $minimum := include "goverse.node.minimumShutdownSeconds" . | int }}
{{- if lt $shutdown $minimum }}
{{- $share := include "goverse.node.leaveShare" . | float64 }}
{{- fail (printf "node.shutdownTimeoutSeconds=%d does not cover the handoff: with membership etcd a stopping node hands its shards off within %.0f%% of its budget, waiting up to the handoff timeout (%s s, node.config.handoffTimeout) for the calls in flight on them; it needs at least %d, or 0 for automatic ((handoff + 1 s) / %.0f%%)" $shutdown (mulf $share 100) (include "goverse.node.handoffSeconds" .) $minimum (mulf $share 100)) }}
{{- end }}
{{- else }}
{{- if $v.node.autoscaling.enabled }}
{{- fail "node.autoscaling needs membership etcd: with membership static the node list is computed from the replica count, so every scale would restart every gate and node (and an autoscaler cannot change that list)" }}
{{- end }}
{{- if $etcd.bundled }}
{{- fail "etcd.bundled=true with membership static: nothing would use that etcd; set membership=etcd" }}
{{- end }}
{{- if $etcd.endpoints }}
{{- fail "etcd.endpoints is set with membership static: nothing would use it; set membership=etcd" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Checks of the store values. A password never goes into a ConfigMap, and the failure messages
never repeat store.url: it may be the very URL with a password that is refused.
*/}}
{{- define "goverse.validateStore" -}}
{{- $v := .Values }}
{{- $s := $v.store }}
{{- if and $s.url $s.existingSecret }}
{{- fail "store.url and store.existingSecret are both set: give the store's URL in values (store.url) or in a Secret (store.existingSecret with store.urlKey), not both" }}
{{- end }}
{{- if and $s.existingSecret (not $s.urlKey) }}
{{- fail "store.existingSecret needs store.urlKey: the key of that Secret that holds the store's URL" }}
{{- end }}
{{- if and $s.urlKey (not $s.existingSecret) }}
{{- fail "store.urlKey is set without store.existingSecret: name the Secret that holds the store's URL" }}
{{- end }}
{{- if and $s.passwordSecret (not $s.passwordKey) }}
{{- fail "store.passwordSecret needs store.passwordKey: the key of that Secret that holds the PostgreSQL password" }}
{{- end }}
{{- if and $s.passwordKey (not $s.passwordSecret) }}
{{- fail "store.passwordKey is set without store.passwordSecret: name the Secret that holds the PostgreSQL password" }}
{{- end }}
{{- if and $s.url (not (regexMatch "^(sqlite:.|postgres(ql)?://.)" $s.url)) }}
{{- fail "store.url is not a store the node knows: use postgresql://USER@HOST:PORT/DB or sqlite:PATH" }}
{{- end }}
{{- /* user:password@ in the authority, or libpq's password= query option */}}
{{- if or (regexMatch "^[A-Za-z]+://[^/@]*:[^/@]*@" $s.url) (regexMatch "[?&]password=" $s.url) }}
{{- fail "store.url contains a password, which the node ConfigMap would hold in plain text: put the password in a Secret (store.passwordSecret with store.passwordKey), or the whole URL (store.existingSecret with store.urlKey)" }}
{{- end }}
{{- if hasPrefix "sqlite:" $s.url }}
{{- if eq $v.membership "etcd" }}
{{- fail "store.url sqlite: serves one node only (its file is not shared between nodes), and membership etcd lets nodes come and go: use a postgresql:// store" }}
{{- end }}
{{- if gt (int $v.node.replicaCount) 1 }}
{{- fail (printf "store.url sqlite: serves one node only (its file is not shared between nodes), and node.replicaCount is %d: set node.replicaCount=1 or use a postgresql:// store" (int $v.node.replicaCount)) }}
{{- end }}
{{- end }}
{{- if not (include "goverse.store.mayBePostgres" .) }}
{{- $what := ternary "a sqlite: store" "no store (state in memory)" (hasPrefix "sqlite:" $s.url) }}
{{- if $s.passwordSecret }}
{{- fail (printf "store.passwordSecret is set with %s: the password file is for PostgreSQL" $what) }}
{{- end }}
{{- if $s.poolSize }}
{{- fail (printf "store.poolSize is set with %s: the pool holds PostgreSQL connections" $what) }}
{{- end }}
{{- end }}
{{- if include "goverse.isZero" $s.saveInterval }}
{{- fail (printf "store.saveInterval (%s) is zero, which the node refuses at start: leave it empty for the node's own default" $s.saveInterval) }}
{{- end }}
{{- if and $s.saveInterval (not (include "goverse.store.enabled" .)) }}
{{- fail "store.saveInterval is set without a store: state in memory is never saved; set store.url or store.existingSecret" }}
{{- end }}
{{- end }}
