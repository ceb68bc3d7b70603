{{/* Chart name, truncated to the 63 characters Kubernetes names allow. */}}
{{- define "affect-bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: release-chart unless the release name already contains the chart name. */}}
{{- define "affect-bridge.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "affect-bridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "affect-bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "affect-bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "affect-bridge.labels" -}}
helm.sh/chart: {{ include "affect-bridge.chart" . }}
{{ include "affect-bridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "affect-bridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "affect-bridge.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the API token and webhook secret(s). */}}
{{- define "affect-bridge.secretName" -}}
{{- default (include "affect-bridge.fullname" .) .Values.existingSecret -}}
{{- end -}}

{{/* The image: with gpu.enabled, the CUDA build (gpu.image); the default image has CPU torch. */}}
{{- define "affect-bridge.image" -}}
{{- if .Values.gpu.enabled -}}
{{- $gpuImage := .Values.gpu.image | default dict -}}
{{- if not $gpuImage.repository -}}
{{- fail "gpu.enabled needs gpu.image.repository: an image whose torch is a CUDA build (docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 -t <repo>:<tag>-cuda .); the default image has CPU-only torch and would never use the GPU" -}}
{{- end -}}
{{- printf "%s:%s" $gpuImage.repository (default .Chart.AppVersion $gpuImage.tag) -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The headless Service: one DNS name per pod, <fullname>-<i>.<headless>.<namespace>.svc. */}}
{{- define "affect-bridge.headless" -}}
{{- printf "%s-headless" (include "affect-bridge.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Replica {index}'s control API (config shard.peer_url): the routing of /v1/calls. */}}
{{- define "affect-bridge.peerURL" -}}
{{- printf "http://%s-{index}.%s.%s.svc:%v" (include "affect-bridge.fullname" .) (include "affect-bridge.headless" .) .Release.Namespace .Values.service.port -}}
{{- end -}}
