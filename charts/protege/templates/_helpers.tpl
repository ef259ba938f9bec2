{{/* The chart name, or nameOverride. */}}
{{- define "protege.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<release>-<name>", or the release name when it contains the name; fullnameOverride wins. */}}
{{- define "protege.fullname" -}}
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

{{/* The operator's objects: Deployment/StatefulSet, Service, ServiceMonitor, RBAC. */}}
{{- define "protege.operatorName" -}}
{{- printf "%s-operator" (include "protege.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "protege.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable across upgrades (never the version). */}}
{{- define "protege.selectorLabels" -}}
app.kubernetes.io/name: {{ include "protege.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The standard labels on every object. */}}
{{- define "protege.labels" -}}
helm.sh/chart: {{ include "protege.chart" . }}
{{ include "protege.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: protege
{{- end }}

{{- define "protege.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "protege.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "protege.operatorImage" -}}
{{- default (printf "ghcr.io/protege-dev/protege-operator:%s" .Chart.AppVersion) .Values.operator.image }}
{{- end }}

{{/* kopf peers when there is more than one replica; the peering object is named after the release. */}}
{{- define "protege.peering" -}}
{{- if gt (int .Values.operator.replicas) 1 }}true{{ end }}
{{- end }}

{{/*
The call log's NATS URL: platform.natsUrl, else this release's NATS Service (the official
chart names it like protege.fullname does, from nats.fullnameOverride / nats.nameOverride),
fully qualified because gateways and jobs run in the pools' namespaces.
*/}}
{{- define "protege.natsUrl" -}}
{{- if .Values.platform.natsUrl }}
{{- .Values.platform.natsUrl }}
{{- else if .Values.nats.enabled }}
{{- $service := "" }}
{{- if .Values.nats.fullnameOverride }}
{{- $service = .Values.nats.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default "nats" .Values.nats.nameOverride }}
{{- if contains $name .Release.Name }}
{{- $service = .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $service = printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- printf "nats://%s.%s.svc:4222" $service .Release.Namespace }}
{{- else }}
{{- fail "platform.natsUrl is required when nats.enabled is false (the gateways log calls to NATS JetStream)" }}
{{- end }}
{{- end }}

{{/* The curator's and discovery's environment: call log, store, S3 keys by reference. */}}
{{- define "protege.pipelineEnv" }}
- name: PROTEGE_NATS_URL
  value: {{ include "protege.natsUrl" . | quote }}
- name: PROTEGE_ARTIFACT_STORE
  value: {{ .Values.platform.artifactStore | quote }}
- name: PROTEGE_HOME
  value: /var/lib/protege
- name: HF_HUB_OFFLINE
  value: "1"
{{- with .Values.platform.s3.endpoint }}
- name: PROTEGE_S3__ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.platform.s3.secretName }}
- name: PROTEGE_S3__ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: accessKeyId
- name: PROTEGE_S3__SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: secretAccessKey
{{- end }}
{{- end }}
