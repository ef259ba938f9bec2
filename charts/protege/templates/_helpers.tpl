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
{{- printf "%s://%s.%s.svc:4222" (ternary "tls" "nats" .Values.callLog.tls.enabled) $service .Release.Namespace }}
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

{{/*
The call log's stream replicas: callLog.replicas, else 3 on a clustered NATS of this release
(at most its servers), else 1.
*/}}
{{- define "protege.callLogReplicas" -}}
{{- if gt (int .Values.callLog.replicas) 0 }}
{{- .Values.callLog.replicas }}
{{- else if and .Values.nats.enabled (dig "config" "cluster" "enabled" false .Values.nats) }}
{{- min 3 (int (dig "config" "cluster" "replicas" 3 .Values.nats)) }}
{{- else }}1{{ end }}
{{- end }}

{{/* The call-log stream's limits, for whoever creates or updates it (gateways, the curator). */}}
{{- define "protege.callLogEnv" }}
- name: PROTEGE_CALL_LOG__MAX_AGE_DAYS
  value: {{ .Values.callLog.maxAgeDays | quote }}
- name: PROTEGE_CALL_LOG__MAX_BYTES
  value: {{ .Values.callLog.maxBytes | int64 | quote }}
- name: PROTEGE_CALL_LOG__REPLICAS
  value: {{ include "protege.callLogReplicas" . | quote }}
{{- end }}

{{/*
A component's identity on the call log (dict "ctx" $ "user" "curator"): its user, its password
from the Secret callLog.auth.secretName (key: the user), the CA that NATS's certificate is checked
against. The CA's volume: protege.natsCaVolume / protege.natsCaMount.
*/}}
{{- define "protege.natsIdentityEnv" }}
{{- $log := .ctx.Values.callLog }}
{{- if $log.auth.enabled }}
- name: PROTEGE_NATS_AUTH__USER
  value: {{ .user | quote }}
- name: PROTEGE_NATS_AUTH__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $log.auth.secretName }}
      key: {{ .user }}
{{- end }}
{{- if and $log.tls.enabled $log.tls.caSecretName }}
- name: PROTEGE_NATS_AUTH__TLS_CA_FILE
  value: /etc/protege/nats-ca/ca.crt
{{- end }}
{{- end }}

{{- define "protege.natsCaMount" }}
{{- if and .Values.callLog.tls.enabled .Values.callLog.tls.caSecretName }}
- name: nats-ca
  mountPath: /etc/protege/nats-ca
  readOnly: true
{{- end }}
{{- end }}

{{- define "protege.natsCaVolume" }}
{{- if and .Values.callLog.tls.enabled .Values.callLog.tls.caSecretName }}
- name: nats-ca
  secret:
    secretName: {{ .Values.callLog.tls.caSecretName }}
{{- end }}
{{- end }}

{{/*
The NATS users of the call log, as JSON (protege.capture.access defines the same permissions;
tests/chart checks they agree): each component and listener-SDK tenant may publish only what it
must and subscribe only to its own inbox. Passwords are references to the server's environment,
where the Secret callLog.auth.secretName is loaded with the prefix PROTEGE_NATS_.
*/}}
{{- define "protege.natsUsers" -}}
{{- $stream := "PROTEGE_CALLS" }}
{{- $dead := "PROTEGE_DEADLETTER" }}
{{- $api := "$JS.API" }}
{{- $users := list }}
{{- $gateway := list "protege.calls.>" (printf "%s.STREAM.INFO.%s" $api $stream) (printf "%s.STREAM.CREATE.%s" $api $stream) (printf "%s.STREAM.UPDATE.%s" $api $stream) }}
{{- $curator := list (printf "%s.STREAM.INFO.%s" $api $stream) (printf "%s.STREAM.CREATE.%s" $api $stream) (printf "%s.STREAM.UPDATE.%s" $api $stream) (printf "%s.CONSUMER.CREATE.%s.>" $api $stream) (printf "%s.CONSUMER.DURABLE.CREATE.%s.>" $api $stream) (printf "%s.CONSUMER.INFO.%s.>" $api $stream) (printf "%s.CONSUMER.MSG.NEXT.%s.>" $api $stream) (printf "%s.STREAM.INFO.%s" $api $dead) (printf "%s.STREAM.CREATE.%s" $api $dead) (printf "$JS.ACK.%s.>" $stream) "protege.deadletter.calls" }}
{{- $operator := list (printf "%s.STREAM.INFO.%s" $api $stream) (printf "%s.CONSUMER.CREATE.%s" $api $stream) (printf "%s.CONSUMER.CREATE.%s.>" $api $stream) (printf "%s.CONSUMER.INFO.%s.>" $api $stream) (printf "%s.CONSUMER.MSG.NEXT.%s.>" $api $stream) }}
{{- $publish := dict "gateway" $gateway "curator" $curator "operator" $operator }}
{{- range $tenant := .Values.callLog.auth.tenants }}
{{- $_ := set $publish (printf "tenant-%s" $tenant) (list (printf "protege.calls.%s.>" $tenant)) }}
{{- end }}
{{- range $user := concat (list "gateway" "curator" "operator") (sortAlpha (keys (omit $publish "gateway" "curator" "operator"))) }}
{{- $permissions := dict "publish" (dict "allow" (get $publish $user)) "subscribe" (dict "allow" (list (printf "_INBOX.%s.>" $user))) }}
{{- $users = append $users (dict "user" $user "password" (printf "<<$PROTEGE_NATS_%s>>" $user) "permissions" $permissions) }}
{{- end }}
{{- toRawJson $users }}
{{- end }}
