{{/*
Security of gates and nodes, in one place: TLS (mutual between gates and nodes, server-only
towards clients), the plaintext health port the probes use when TLS is on, client
authentication on the gates (JWT), and access rules. Every file a service reads is mounted
read-only under /etc/goverse/<what>/ from a Secret or ConfigMap; the GOVERSE_* variables that
point at them are in the ConfigMaps (paths only, never a secret).

Flags (contract of the tls, auth and harden branches): --tls-cert, --tls-key, --tls-ca (both),
--client-tls-cert, --client-tls-key (gate), --health-port (both), --authenticator and
--jwt-* (gate), --access-rules (both), --metrics-host (both).
*/}}

{{/* Directories of the mounted files. */}}
{{- define "goverse.tls.dir" -}}/etc/goverse/tls{{- end }}
{{- define "goverse.clientTls.dir" -}}/etc/goverse/client-tls{{- end }}
{{- define "goverse.jwt.dir" -}}/etc/goverse/jwt{{- end }}
{{- define "goverse.accessRules.dir" -}}/etc/goverse/access-rules{{- end }}

{{/* Name of the access rules ConfigMap. */}}
{{- define "goverse.accessRules.fullname" -}}
{{- printf "%s-access-rules" (include "goverse.fullname" .) }}
{{- end }}

{{/*
The Secret (kubernetes.io/tls layout: tls.crt, tls.key, ca.crt) of a component's TLS identity:
tls.secrets.<component>, or with cert-manager the one its Certificate writes. Call with
(dict "ctx" $ "component" "gate"); "gateClient" for the gate's client-facing certificate.
*/}}
{{- define "goverse.tls.secretName" -}}
{{- $tls := .ctx.Values.tls }}
{{- if eq .component "gateClient" }}
{{- if $tls.clientCertificate.secretName }}
{{- $tls.clientCertificate.secretName }}
{{- else }}
{{- printf "%s-gate-client-tls" (include "goverse.fullname" .ctx) }}
{{- end }}
{{- else if eq $tls.source "secrets" }}
{{- index $tls.secrets .component }}
{{- else }}
{{- printf "%s-%s-tls" (include "goverse.fullname" .ctx) .component }}
{{- end }}
{{- end }}

{{/* "true" when the gate's client listener has a certificate of its own, else empty. */}}
{{- define "goverse.clientTls.enabled" -}}
{{- if and .Values.tls.enabled .Values.tls.clientCertificate.enabled }}true{{- end }}
{{- end }}

{{/* "true" when the gate verifies client tokens as JWT, else empty. */}}
{{- define "goverse.jwt.enabled" -}}
{{- if eq .Values.gate.auth.authenticator "jwt" }}true{{- end }}
{{- end }}

{{/* The JWT key files the gate reads: (list (list <flag variable> <Secret key> <file>)). */}}
{{- define "goverse.jwt.files" -}}
{{- $jwt := .Values.gate.auth.jwt }}
{{- $files := list }}
{{- if $jwt.secretKey }}{{ $files = append $files (list "GOVERSE_JWT_SECRET_FILE" $jwt.secretKey "hs256-secret") }}{{ end }}
{{- if $jwt.publicKeyKey }}{{ $files = append $files (list "GOVERSE_JWT_PUBLIC_KEY" $jwt.publicKeyKey "public-key.pem") }}{{ end }}
{{- if $jwt.jwksKey }}{{ $files = append $files (list "GOVERSE_JWT_JWKS_FILE" $jwt.jwksKey "jwks.json") }}{{ end }}
{{- toJson $files }}
{{- end }}

{{/*
ConfigMap entries of the security settings. Call with (dict "ctx" $ "component" "gate").
*/}}
{{- define "goverse.securityConfig" -}}
{{- $v := .ctx.Values }}
{{- $c := index $v .component }}
{{- if $v.metrics.enabled }}
GOVERSE_METRICS_HOST: {{ $v.metrics.host | quote }}
{{- end }}
{{- if $v.tls.enabled }}
GOVERSE_TLS_CERT: {{ printf "%s/tls.crt" (include "goverse.tls.dir" .ctx) | quote }}
GOVERSE_TLS_KEY: {{ printf "%s/tls.key" (include "goverse.tls.dir" .ctx) | quote }}
GOVERSE_TLS_CA: {{ printf "%s/ca.crt" (include "goverse.tls.dir" .ctx) | quote }}
GOVERSE_HEALTH_PORT: {{ $c.healthPort | toString | quote }}
{{- if and (eq .component "gate") (include "goverse.clientTls.enabled" .ctx) }}
GOVERSE_CLIENT_TLS_CERT: {{ printf "%s/tls.crt" (include "goverse.clientTls.dir" .ctx) | quote }}
GOVERSE_CLIENT_TLS_KEY: {{ printf "%s/tls.key" (include "goverse.clientTls.dir" .ctx) | quote }}
{{- end }}
{{- end }}
{{- if eq .component "gate" }}
{{- $auth := $c.auth }}
{{- if ne $auth.authenticator "none" }}
GOVERSE_AUTHENTICATOR: {{ $auth.authenticator | quote }}
{{- end }}
{{- if include "goverse.jwt.enabled" .ctx }}
{{- range include "goverse.jwt.files" .ctx | fromJsonArray }}
{{ index . 0 }}: {{ printf "%s/%s" (include "goverse.jwt.dir" $.ctx) (index . 2) | quote }}
{{- end }}
{{- with $auth.jwt.audience }}
GOVERSE_JWT_AUDIENCE: {{ . | quote }}
{{- end }}
{{- with $auth.jwt.issuer }}
GOVERSE_JWT_ISSUER: {{ . | quote }}
{{- end }}
{{- with $auth.jwt.claims }}
GOVERSE_JWT_CLAIMS: {{ join "," . | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- if $v.accessRules.enabled }}
GOVERSE_ACCESS_RULES: {{ printf "%s/%s" (include "goverse.accessRules.dir" .ctx) $v.accessRules.fileName | quote }}
{{- end }}
{{- end }}

{{/* Read-only file modes: owner and group with an fsGroup (the kubelet makes it the files'
group), else other-read too (the files stay root's). */}}
{{- define "goverse.secretMode" -}}
{{- if .Values.podSecurityContext.fsGroup }}0440{{ else }}0444{{ end }}
{{- end }}

{{/* volumeMounts of the security files. Call with (dict "ctx" $ "component" "gate"). */}}
{{- define "goverse.securityMounts" -}}
{{- $v := .ctx.Values }}
{{- if $v.tls.enabled }}
# Whole directories, not subPath: the kubelet swaps rotated files in and the services reload
# them without a restart.
- name: tls
  mountPath: {{ include "goverse.tls.dir" .ctx }}
  readOnly: true
{{- if and (eq .component "gate") (include "goverse.clientTls.enabled" .ctx) }}
- name: client-tls
  mountPath: {{ include "goverse.clientTls.dir" .ctx }}
  readOnly: true
{{- end }}
{{- end }}
{{- if and (eq .component "gate") (include "goverse.jwt.enabled" .ctx) }}
- name: jwt
  mountPath: {{ include "goverse.jwt.dir" .ctx }}
  readOnly: true
{{- end }}
{{- if $v.accessRules.enabled }}
- name: access-rules
  mountPath: {{ include "goverse.accessRules.dir" .ctx }}
  readOnly: true
{{- end }}
{{- end }}

{{/* volumes of the security files. Call with (dict "ctx" $ "component" "gate"). */}}
{{- define "goverse.securityVolumes" -}}
{{- $v := .ctx.Values }}
{{- $mode := include "goverse.secretMode" .ctx }}
{{- if $v.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "goverse.tls.secretName" . | quote }}
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
      - key: ca.crt
        path: ca.crt
    defaultMode: {{ $mode }}
{{- if and (eq .component "gate") (include "goverse.clientTls.enabled" .ctx) }}
- name: client-tls
  secret:
    secretName: {{ include "goverse.tls.secretName" (dict "ctx" .ctx "component" "gateClient") | quote }}
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
    defaultMode: {{ $mode }}
{{- end }}
{{- end }}
{{- if and (eq .component "gate") (include "goverse.jwt.enabled" .ctx) }}
- name: jwt
  secret:
    secretName: {{ $v.gate.auth.jwt.existingSecret | quote }}
    items:
      {{- range include "goverse.jwt.files" .ctx | fromJsonArray }}
      - key: {{ index . 1 | quote }}
        path: {{ index . 2 }}
      {{- end }}
    defaultMode: {{ $mode }}
{{- end }}
{{- if $v.accessRules.enabled }}
- name: access-rules
  configMap:
    name: {{ include "goverse.accessRules.fullname" .ctx }}
{{- end }}
{{- end }}

{{/*
The port the kubelet's gRPC probes use: the plaintext health port with TLS, else the gRPC
port. Call with (dict "ctx" $ "component" "gate").
*/}}
{{- define "goverse.probePort" -}}
{{- $c := index .ctx.Values .component }}
{{- if .ctx.Values.tls.enabled }}{{ $c.healthPort }}{{ else }}{{ $c.port }}{{ end }}
{{- end }}

{{/* Checks of the security values. */}}
{{- define "goverse.validateSecurity" -}}
{{- $v := .Values }}
{{- $tls := $v.tls }}
{{- $auth := $v.gate.auth }}
{{- if eq $auth.authenticator "jwt" }}
{{- if not $auth.jwt.existingSecret }}
{{- fail "gate.auth.authenticator=jwt needs gate.auth.jwt.existingSecret: the Secret with the HS256 secret, the public key or the JWKS" }}
{{- end }}
{{- if not (or $auth.jwt.secretKey $auth.jwt.publicKeyKey $auth.jwt.jwksKey) }}
{{- fail "gate.auth.authenticator=jwt needs one of gate.auth.jwt.secretKey (HS256), publicKeyKey (RS256/ES256) or jwksKey: the key of gate.auth.jwt.existingSecret to verify tokens with" }}
{{- end }}
{{- if gt (len (include "goverse.jwt.files" . | fromJsonArray)) 1 }}
{{- fail "gate.auth.authenticator=jwt takes only one of gate.auth.jwt.secretKey, publicKeyKey and jwksKey: the gate verifies tokens with exactly one key source and refuses to start with more" }}
{{- end }}
{{- if not (or $tls.enabled $v.gate.ingress.enabled $v.gate.grpcRoute.enabled) }}
{{- fail "gate.auth.authenticator=jwt without TLS: bearer tokens would cross the network in the clear; set tls.enabled=true (or terminate TLS at gate.ingress or gate.grpcRoute)" }}
{{- end }}
{{- else if $auth.jwt.existingSecret }}
{{- fail (printf "gate.auth.jwt.existingSecret is set with gate.auth.authenticator=%s: the JWT settings are used only with jwt" $auth.authenticator) }}
{{- end }}
{{- if and $v.accessRules.enabled (not $v.accessRules.rules) }}
{{- fail "accessRules.enabled needs accessRules.rules: the rules file's contents" }}
{{- end }}
{{- if $tls.enabled }}
{{- if eq $tls.source "secrets" }}
{{- range $component := list "gate" "node" }}
{{- if not (index $tls.secrets $component) }}
{{- fail (printf "tls.source=secrets needs tls.secrets.%s: the Secret (tls.crt, tls.key, ca.crt) of the %s certificate, whose one URI SAN is spiffe://goverse/%s/<name>" $component $component $component) }}
{{- end }}
{{- end }}
{{- else if not $tls.certManager.issuerRef.name }}
{{- fail "tls.enabled (the default) with tls.source=certManager needs tls.certManager.issuerRef.name: a cert-manager CA Issuer or ClusterIssuer (its ca.crt is the cluster CA gates and nodes trust); or tls.source=secrets with tls.secrets.gate and tls.secrets.node; or tls.enabled=false for a plaintext release, on a network that keeps everything but the gates away from the node port" }}
{{- end }}
{{- range $component := list "gate" "node" }}
{{- $c := index $v $component }}
{{- if not $c.healthPort }}
{{- fail (printf "tls.enabled needs %s.healthPort: the kubelet's gRPC probes present no client certificate and speak no TLS, so they need the plaintext health-only port" $component) }}
{{- end }}
{{- if or (eq (int $c.healthPort) (int $c.port)) (and $v.metrics.enabled (eq (int $c.healthPort) (int $v.metrics.port))) }}
{{- fail (printf "%s.healthPort (%d) must differ from %s.port and metrics.port" $component (int $c.healthPort) $component) }}
{{- end }}
{{- end }}
{{- if and $tls.clientCertificate.enabled (not $tls.clientCertificate.secretName) (ne $tls.source "certManager") }}
{{- fail "tls.clientCertificate.enabled needs tls.clientCertificate.secretName (or tls.source=certManager, which makes it)" }}
{{- end }}
{{- if and $tls.clientCertificate.enabled (not $tls.clientCertificate.secretName) (not $tls.clientCertificate.dnsNames) }}
{{- fail "tls.clientCertificate.enabled with cert-manager needs tls.clientCertificate.dnsNames: the names clients dial" }}
{{- end }}
{{- else if $tls.clientCertificate.enabled }}
{{- fail "tls.clientCertificate.enabled needs tls.enabled" }}
{{- end }}
{{- end }}
