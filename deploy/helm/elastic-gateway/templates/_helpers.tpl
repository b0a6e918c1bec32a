{{/* Names, labels and the decisions several templates share. */}}

{{- define "elastic-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-elastic-gateway, or the release name if it already contains the chart name. */}}
{{- define "elastic-gateway.fullname" -}}
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

{{/* The API Service's name: the full name with "-api", kept within 63 characters. */}}
{{- define "elastic-gateway.apiServiceName" -}}
{{- printf "%s-api" (include "elastic-gateway.fullname" . | trunc 59 | trimSuffix "-") }}
{{- end }}

{{- define "elastic-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "elastic-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Standard labels; call with (dict "root" $ "component" "...") */}}
{{- define "elastic-gateway.labels" -}}
{{ include "elastic-gateway.selectorLabels" .root }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/component: {{ .component }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "elastic-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "elastic-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret with the gateway's own secrets: the chart's, or gateway.existingSecret. */}}
{{- define "elastic-gateway.secretName" -}}
{{- default (include "elastic-gateway.fullname" .) .Values.gateway.existingSecret }}
{{- end }}

{{/* "true" when the scheduler launcher or any pool uses the Kubernetes launcher. */}}
{{- define "elastic-gateway.usesKubernetes" -}}
{{- $backend := .Values.gateway.backend }}
{{- $uses := false }}
{{- $scheduler := $backend.schedulerLauncher }}
{{- if kindIs "map" $scheduler }}
{{- $scheduler = get $scheduler "launcher" }}
{{- end }}
{{- if eq (toString $scheduler) "kubernetes" }}
{{- $uses = true }}
{{- end }}
{{- if not $backend.pools }}
{{- $uses = true }}{{/* the default pool: pods */}}
{{- end }}
{{- range $name, $pool := $backend.pools }}
{{- if eq (toString (get $pool "launcher")) "kubernetes" }}
{{- $uses = true }}
{{- end }}
{{- end }}
{{- $uses }}
{{- end }}

{{/* The namespace where the Kubernetes launcher makes pods (and where the Role goes). */}}
{{- define "elastic-gateway.podsNamespace" -}}
{{- default .Release.Namespace .Values.gateway.backend.kubernetes.namespace }}
{{- end }}

{{/* The path prefix the proxy serves under ("" unless behind JupyterHub). */}}
{{- define "elastic-gateway.prefix" -}}
{{- if .Values.jupyterhub.enabled }}
{{- .Values.jupyterhub.prefix | trimSuffix "/" }}
{{- end }}
{{- end }}

{{- define "elastic-gateway.apiUrl" -}}
{{- printf "http://%s.%s.svc:%d/api" (include "elastic-gateway.apiServiceName" .) .Release.Namespace (int .Values.gateway.ports.api) }}
{{- end }}

{{- define "elastic-gateway.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* True when the state lives in an external database (no PersistentVolumeClaim then). */}}
{{- define "elastic-gateway.externalDatabase" -}}
{{- if or .Values.gateway.state.databaseUrl .Values.gateway.state.existingSecret }}true{{ end }}
{{- end }}

{{- define "elastic-gateway.claimName" -}}
{{- default (include "elastic-gateway.fullname" .) .Values.gateway.state.persistence.existingClaim }}
{{- end }}
