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

{{/*
CEL: the request is not by one of the controllers that act on behalf of an
already authorised change (the operator, the namespace controller, the
garbage collector).
*/}}
{{- define "mahler.policyExemptUsers" -}}
{{- $users := list (printf "system:serviceaccount:%s:%s" .Release.Namespace (include "mahler.serviceAccountName" .)) "system:serviceaccount:kube-system:namespace-controller" "system:serviceaccount:kube-system:generic-garbage-collector" "system:kube-controller-manager" -}}
{{- printf "!(request.userInfo.username in [%s])" (include "mahler.quoteAll" $users) | quote -}}
{{- end }}

{{- define "mahler.quoteAll" -}}
{{- $out := list -}}
{{- range . }}{{ $out = append $out (printf "'%s'" .) }}{{ end -}}
{{- join ", " $out -}}
{{- end }}

{{/* The pod-log agent's namespace (telemetry.logs.namespace, else the release's). */}}
{{- define "mahler.logAgentNamespace" -}}
{{- default .Release.Namespace .Values.telemetry.logs.namespace -}}
{{- end -}}
