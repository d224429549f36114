{{/*
Names, labels and the values every template shares. The node list is computed here, once, so
the gates, the nodes and NOTES.txt agree on it.
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

{{/* An image reference. Call with (dict "image" .Values.gate.image "ctx" $). */}}
{{- define "goverse.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) }}
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
empty strings and zeros (the service's own default) are left out.
*/}}
{{- define "goverse.flagConfig" -}}
{{- range $key, $value := . }}
{{- /* numbers arrive as float64: int64 keeps 1000000 from rendering as 1e+06 */}}
{{- $text := ternary $value (toString (int64 $value)) (kindIs "string" $value) }}
{{- if and $text (ne $text "0") }}
GOVERSE_{{ $key | snakecase | upper }}: {{ $text | quote }}
{{- end }}
{{- end }}
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
Checks of combinations the schema cannot express; `fail` stops install, upgrade, template
and lint with the reason.
*/}}
{{- define "goverse.validate" -}}
{{- $v := .Values }}
{{- range $component := list "gate" "node" }}
{{- $c := index $v $component }}
{{- $needed := add $c.preStopSleepSeconds $c.shutdownTimeoutSeconds 2 }}
{{- if lt (int $c.terminationGracePeriodSeconds) (int $needed) }}
{{- fail (printf "%s.terminationGracePeriodSeconds=%d is too short: it must cover %s.preStopSleepSeconds (%d) + %s.shutdownTimeoutSeconds (%d) + a margin of at least 2 s (recommended 5 s), i.e. at least %d" $component (int $c.terminationGracePeriodSeconds) $component (int $c.preStopSleepSeconds) $component (int $c.shutdownTimeoutSeconds) (int $needed)) }}
{{- end }}
{{- if and $v.metrics.enabled (eq (int $c.port) (int $v.metrics.port)) }}
{{- fail (printf "%s.port and metrics.port are both %d; they must differ" $component (int $c.port)) }}
{{- end }}
{{- end }}
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
{{- if and $svc.loadBalancerSourceRanges (ne $svc.type "LoadBalancer") }}
{{- fail "gate.service.loadBalancerSourceRanges needs gate.service.type LoadBalancer" }}
{{- end }}
{{- if and $v.tests.enabled (not (has "goverse.examples.counter" $v.node.objects)) }}
{{- fail "tests.enabled: the helm test calls Counter.Increment, so node.objects must include goverse.examples.counter (or set tests.enabled=false)" }}
{{- end }}
{{- $longest := printf "%s-%d" (include "goverse.node.fullname" .) (sub (int $v.node.replicaCount) 1) }}
{{- if gt (len $longest) 63 }}
{{- fail (printf "the node pod name %s is longer than 63 characters; use a shorter release name or fullnameOverride" $longest) }}
{{- end }}
{{- end }}
