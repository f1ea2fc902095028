{{/* Names, labels and the few decisions every template shares. */}}

{{- define "mlcd.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: "mlcd" for a release named mlcd, else "<release>-mlcd". */}}
{{- define "mlcd.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "mlcd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mlcd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mlcd.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "mlcd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: mlcd
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "mlcd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mlcd.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: the ServiceAccount to run as when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "mlcd.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "mlcd.peeringName" -}}
{{- default (include "mlcd.fullname" .) .Values.peering.name -}}
{{- end -}}

{{- define "mlcd.claimName" -}}
{{- default (printf "%s-state" (include "mlcd.fullname" .)) .Values.persistence.existingClaim -}}
{{- end -}}

{{/* The KFP token Secret as MLCD_KFP_TOKEN_SECRET reads it: namespace/name#key. */}}
{{- define "mlcd.kfpTokenRef" -}}
{{- with .Values.kubeflow.tokenSecret -}}
{{- printf "%s/%s#%s" (default $.Release.Namespace .namespace) .name .key -}}
{{- end -}}
{{- end -}}

{{/* The rules of the install that a schema states less clearly than a sentence. */}}
{{- define "mlcd.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (eq .Values.operator.engine "local") -}}
{{- fail "replicas: the local engine runs with 1 replica (its runs, models and servers live on one node's volume); more replicas are for the kubeflow engine" -}}
{{- end -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.peering.enabled) -}}
{{- fail "peering.enabled: several replicas must peer, or each of them would act" -}}
{{- end -}}
{{- if and (eq .Values.operator.engine "kubeflow") (not .Values.kubeflow.endpoint) -}}
{{- fail "kubeflow.endpoint: operator.engine kubeflow needs the Kubeflow Pipelines API's address (e.g. http://ml-pipeline.kubeflow:8888)" -}}
{{- end -}}
{{- end -}}
