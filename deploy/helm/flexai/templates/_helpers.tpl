{{/* Names, labels and the shared pieces of the templates. */}}

{{- define "flexai.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "flexai.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Component names: "<fullname>-scheduler" and "<fullname>-node". */}}
{{- define "flexai.scheduler.fullname" -}}
{{- printf "%s-scheduler" (include "flexai.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "flexai.node.fullname" -}}
{{- printf "%s-node" (include "flexai.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "flexai.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "flexai.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component: include with (list $ "scheduler"). */}}
{{- define "flexai.selectorLabels" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: {{ include "flexai.name" $ }}
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "flexai.image" -}}
{{- $ := index . 0 }}{{ $img := index . 1 }}
{{- printf "%s:%s" $img.repository (default $.Chart.AppVersion $img.tag) }}
{{- end }}

{{/* The label that marks a GPU node (flexai_core.annotations.GPU_NODE_LABEL). */}}
{{- define "flexai.gpuNodeLabel" -}}vgpu.flexai.io/gpu-node{{- end }}

{{/* kube-scheduler's lease: its own name, so it never competes with the default scheduler's "kube-scheduler". */}}
{{- define "flexai.leaseName" -}}
{{- include "flexai.scheduler.fullname" . }}
{{- end }}

{{- define "flexai.extender.scheme" -}}
{{- if .Values.scheduler.extender.tls.enabled }}https{{ else }}http{{ end }}
{{- end }}

{{/*
The extenders: list (one entry) of the KubeSchedulerConfiguration. Its content comes from ONE
source, files/extender.yaml, which the end-to-end tests load too; the chart only fills
the URL and, with TLS, switches HTTPS on and says where the CA is.
*/}}
{{- define "flexai.extenderBlock" -}}
{{- $url := printf "%s://127.0.0.1:%d" (include "flexai.extender.scheme" .) (int .Values.scheduler.extender.port) }}
{{- $block := .Files.Get "files/extender.yaml" | replace "URL_PREFIX" $url | fromYaml }}
{{- $tls := .Values.scheduler.extender.tls }}
{{- if $tls.enabled }}
{{- $cfg := dict "caFile" (printf "%s/ca.crt" $tls.mountPath) }}
{{- if $tls.serverName }}{{ $_ := set $cfg "serverName" $tls.serverName }}{{ end }}
{{- $_ := set $block "enableHTTPS" true }}
{{- $_ := set $block "tlsConfig" $cfg }}
{{- end }}
{{- toYaml (list $block) }}
{{- end }}

{{/* The apiserver address of the pods, when apiServer.host is set (no kube-proxy): the
variables client-go and the Python client read for their in-cluster configuration. */}}
{{- define "flexai.apiServerEnv" -}}
{{- if .Values.apiServer.host }}
- {name: KUBERNETES_SERVICE_HOST, value: {{ .Values.apiServer.host | quote }}}
- {name: KUBERNETES_SERVICE_PORT, value: {{ .Values.apiServer.port | toString | quote }}}
{{- end }}
{{- end }}

{{/* Fail early on values that would only fail at run time. */}}
{{- define "flexai.validate" -}}
{{- $tls := .Values.scheduler.extender.tls }}
{{- if and .Values.apiServer.host (not .Values.apiServer.port) }}
{{- fail "apiServer.host needs apiServer.port (the kube-apiserver's secure port)" }}
{{- end }}
{{- if and $tls.enabled (not $tls.secretName) }}
{{- fail "scheduler.extender.tls.enabled needs scheduler.extender.tls.secretName (a Secret with tls.crt, tls.key, ca.crt)" }}
{{- end }}
{{- if le (float64 .Values.policy.heartbeatTTLSeconds) (float64 .Values.node.reportEverySeconds) }}
{{- fail "policy.heartbeatTTLSeconds must exceed node.reportEverySeconds, or every node looks silent between heartbeats" }}
{{- end }}
{{- if not (has .Values.policy.nodePolicy (list "binpack" "spread" "bestfit" "fgd" "fragmentation" "gpupacking" "random")) }}
{{- fail (printf "policy.nodePolicy %q: unknown policy" .Values.policy.nodePolicy) }}
{{- end }}
{{- if not (has .Values.policy.cardPolicy (list "binpack" "spread" "bestfit" "fgd" "fragmentation" "gpupacking" "random")) }}
{{- fail (printf "policy.cardPolicy %q: unknown policy" .Values.policy.cardPolicy) }}
{{- end }}
{{- $percent := int .Values.scheduler.kubeScheduler.percentageOfNodesToScore }}
{{- if or (lt $percent 0) (gt $percent 100) }}
{{- fail (printf "scheduler.kubeScheduler.percentageOfNodesToScore %d: must be 0 (adaptive) to 100" $percent) }}
{{- end }}
{{- if not (has .Values.policy.filterAnswer (list "best" "all")) }}
{{- fail (printf "policy.filterAnswer %q: must be best or all" .Values.policy.filterAnswer) }}
{{- end }}
{{- end }}
