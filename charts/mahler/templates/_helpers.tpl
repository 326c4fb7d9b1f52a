{{/* The operator's objects are named <release>-operator ("mahler-operator"). */}}
{{- define "mahler.fullname" -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mahler.selectorLabels" -}}
app.kubernetes.io/name: mahler-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mahler.labels" -}}
{{ include "mahler.selectorLabels" . }}
app.kubernetes.io/part-of: mahler
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "mahler.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mahler.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "mahler.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
