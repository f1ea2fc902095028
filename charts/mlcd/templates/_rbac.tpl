{{/*
What the operator may do, one block per concern. Namespaced blocks go into a Role in each
watched namespace (namespaced mode) or into the ClusterRole (cluster-wide mode); cluster blocks
always go into the ClusterRole. An engine or a serving target adds its own block below and
includes it in "mlcd.rules.namespaced" (docs/install.md, "Adding permissions"). deploy/ holds
the same rules for kustomize; tests/chart/test_rbac.py compares the two.
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

{{/* Everything the operator does inside a watched namespace. */}}
{{- define "mlcd.rules.namespaced" -}}
{{ include "mlcd.rules.pipelines" . }}
{{ include "mlcd.rules.events" . }}
{{ include "mlcd.rules.secrets" . }}
{{- with include "mlcd.rules.engine.local" . }}
{{ . }}
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
