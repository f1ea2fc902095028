{{/*
What the operator may do, one block per concern. Namespaced blocks go into a Role in each
watched namespace (namespaced mode) or into the ClusterRole (cluster-wide mode); cluster blocks
always go into the ClusterRole. An engine or a serving target adds its own block below and
includes it in "mlcd.rules.namespaced"; what it needs in one namespace of its own (KServe's,
the KFP token's) is a Role there in both modes (docs/install.md, "Adding permissions"). deploy/
holds the same rules for kustomize; tests/chart/test_kustomize.py compares the two.
*/}}

{{/* ModelPipelines: watched; finalizer and bookkeeping annotations patched; never created. */}}
{{- define "mlcd.rules.pipelines" -}}
- apiGroups: [mlcd.io]
  resources: [modelpipelines]
  verbs: [get, list, watch, patch]
- apiGroups: [mlcd.io]
  resources: [modelpipelines/status]
  verbs: [get, update, patch]
{{- end -}}

{{/* Decisions are reported as Events. */}}
{{- define "mlcd.rules.events" -}}
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}

{{/* Secrets named by spec.dataset/spec.artifacts.credentialsSecretRef: read one by name,
never listed or watched. Cluster-wide mode grants this in every namespace. */}}
{{- define "mlcd.rules.secrets" -}}
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
{{- end -}}

{{/* Peering between replicas: a KopfPeering per watched namespace (namespaced mode). */}}
{{- define "mlcd.rules.peering.namespaced" -}}
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, patch]
{{- end -}}

{{/* Engine: local. It runs pipelines in the operator's pod and needs no permission. */}}
{{- define "mlcd.rules.engine.local" -}}
{{- end -}}

{{/* Engine: kubeflow. Runs go to the Kubeflow Pipelines API (no RBAC); Experiments and jobs
are created by the pipeline's steps under their own service account, not by the operator. The
operator reads one Secret outside the pipelines' namespaces, the KFP token, by name: in a Role
of the token's namespace ("mlcd.rules.engine.kubeflow.token"). */}}
{{- define "mlcd.rules.engine.kubeflow" -}}
{{- end -}}

{{- define "mlcd.rules.engine.kubeflow.token" -}}
- apiGroups: [""]
  resources: [secrets]
  resourceNames: [{{ .Values.kubeflow.tokenSecret.name | quote }}]
  verbs: [get]
{{- end -}}

{{/* Serving: kserve (operator.serving). In each watched namespace the operator owns one
InferenceService per pipeline, the Secret and ServiceAccount its predictors read the model
repository with (written by server-side apply: create, then patch; never read back) and, in
RawDeployment mode, the HTTPRoute that splits traffic during a rollout. Owner references with
blockOwnerDeletion need update on the ModelPipeline's finalizers where the API server enforces
OwnerReferencesPermissionEnforcement. */}}
{{- define "mlcd.rules.serving.kserve" -}}
{{- if eq .Values.operator.serving "kserve" -}}
- apiGroups: [serving.kserve.io]
  resources: [inferenceservices]
  verbs: [get, list, create, patch, delete]
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes]
  verbs: [get, create, patch, delete]
- apiGroups: [""]
  resources: [secrets, serviceaccounts]
  verbs: [create, patch, delete]
- apiGroups: [mlcd.io]
  resources: [modelpipelines/finalizers]
  verbs: [update]
{{- end -}}
{{- end -}}

{{/* Serving: kserve, in KServe's namespace (kserve.namespace): its ConfigMap, for the default
deployment mode, the S3 key names and the Gateway; that one ConfigMap, read only. */}}
{{- define "mlcd.rules.serving.kserve.config" -}}
- apiGroups: [""]
  resources: [configmaps]
  resourceNames: [inferenceservice-config]
  verbs: [get]
{{- end -}}

{{/* Everything the operator does inside a watched namespace. */}}
{{- define "mlcd.rules.namespaced" -}}
{{ include "mlcd.rules.pipelines" . }}
{{ include "mlcd.rules.events" . }}
{{ include "mlcd.rules.secrets" . }}
{{- range $block := list "mlcd.rules.engine.local" "mlcd.rules.engine.kubeflow" "mlcd.rules.serving.kserve" }}
{{- with include $block $ }}
{{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* kopf finds which resources exist through the CRDs, in either mode. */}}
{{- define "mlcd.rules.discovery" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- end -}}

{{/* Cluster-wide only: kopf follows namespaces as they come and go; peering is cluster-wide. */}}
{{- define "mlcd.rules.clusterwide" -}}
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- if .Values.peering.enabled }}
- apiGroups: [kopf.dev]
  resources: [clusterkopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}
{{- end -}}

{{/* A Role and its RoleBinding in one namespace of a target's own (root, suffix, namespace,
rules): the same in both modes. */}}
{{- define "mlcd.namespaceRole" -}}
{{- $name := printf "%s-%s" (include "mlcd.fullname" .root) .suffix }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {{ $name }}
  namespace: {{ .namespace }}
  labels:
    {{- include "mlcd.labels" .root | nindent 4 }}
rules:
{{ .rules }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ $name }}
  namespace: {{ .namespace }}
  labels:
    {{- include "mlcd.labels" .root | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ $name }}
subjects:
  - kind: ServiceAccount
    name: {{ include "mlcd.serviceAccountName" .root }}
    namespace: {{ .root.Release.Namespace }}
{{- end -}}
