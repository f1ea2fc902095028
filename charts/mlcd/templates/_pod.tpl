{{/* The operator's pod: non-root, read-only root filesystem, every capability dropped; only
the state folder and /tmp are writable. Settings reach the operator as its MLCD_* variables. */}}
{{- define "mlcd.podTemplate" -}}
metadata:
  labels:
    {{- include "mlcd.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "mlcd.serviceAccountName" . }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    runAsNonRoot: true
    runAsUser: {{ .Values.runAsUser }}
    runAsGroup: {{ .Values.runAsUser }}
    fsGroup: {{ .Values.runAsUser }}
    fsGroupChangePolicy: OnRootMismatch
    seccompProfile: {type: RuntimeDefault}
  # Runs outlive a stop: the operator finds them again when it starts (docs/operator.md).
  terminationGracePeriodSeconds: 30
  containers:
    - name: operator
      image: {{ include "mlcd.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args: [operator]
      env:
        {{- with .Values.watchNamespaces }}
        - {name: MLCD_NAMESPACES, value: {{ join "," . | quote }}}
        {{- end }}
        - {name: MLCD_STATE_DIR, value: /var/lib/mlcd}
        - {name: MLCD_ENGINE, value: {{ .Values.operator.engine | quote }}}
        - {name: MLCD_MAX_ACTIVE_RUNS, value: {{ .Values.operator.maxActiveRuns | quote }}}
        - {name: MLCD_TICK, value: {{ .Values.operator.tick | quote }}}
        - {name: MLCD_WORKERS, value: {{ .Values.operator.workers | quote }}}
        - {name: MLCD_WATCH_TIMEOUT, value: {{ .Values.operator.watchTimeout | quote }}}
        - {name: MLCD_METRICS_PORT, value: {{ .Values.metrics.port | quote }}}
        - {name: MLCD_METRICS_ADDRESS, value: 0.0.0.0}
        - {name: MLCD_LIVENESS, value: {{ printf "http://0.0.0.0:%d/healthz" (int .Values.healthPort) | quote }}}
        # Libraries keep caches under HOME; the root filesystem is read-only.
        - {name: HOME, value: /tmp}
        {{- with include "mlcd.servingEnv" . | trim }}
        {{- . | nindent 8 }}
        {{- end }}
        {{- with include "mlcd.kubeflowEnv" . | trim }}
        {{- . | nindent 8 }}
        {{- end }}
        {{- if .Values.peering.enabled }}
        - {name: MLCD_PEERING, value: {{ include "mlcd.peeringName" . | quote }}}
        {{- if gt (int .Values.replicas) 1 }}
        - name: MLCD_PRIORITY
          valueFrom:
            fieldRef: {fieldPath: "metadata.labels['apps.kubernetes.io/pod-index']"}
        {{- else }}
        - {name: MLCD_PRIORITY, value: {{ .Values.peering.priority | quote }}}
        {{- end }}
        {{- end }}
        {{- with .Values.operator.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - {name: metrics, containerPort: {{ .Values.metrics.port }}, protocol: TCP}
        - {name: health, containerPort: {{ .Values.healthPort }}, protocol: TCP}
      startupProbe:
        httpGet: {path: /healthz, port: health}
        periodSeconds: 2
        failureThreshold: 60
      livenessProbe:
        httpGet: {path: /healthz, port: health}
        periodSeconds: 10
        timeoutSeconds: 5
        failureThreshold: 3
      readinessProbe:
        httpGet: {path: /healthz, port: health}
        periodSeconds: 10
        timeoutSeconds: 5
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        privileged: false
        capabilities: {drop: [ALL]}
      volumeMounts:
        - {name: state, mountPath: /var/lib/mlcd}
        - {name: tmp, mountPath: /tmp}
  volumes:
    {{- if and .Values.persistence.enabled (le (int .Values.replicas) 1) }}
    - name: state
      persistentVolumeClaim: {claimName: {{ include "mlcd.claimName" . }}}
    {{- else }}
    - name: state
      emptyDir: {}
    {{- end }}
    - name: tmp
      emptyDir: {sizeLimit: {{ .Values.tmpSizeLimit }}}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}


{{/* Serving on KServe and the Prometheus of rollouts; the operator's default serving is local. */}}
{{- define "mlcd.servingEnv" -}}
{{- if eq .Values.operator.serving "kserve" }}
- {name: MLCD_SERVING, value: kserve}
- {name: MLCD_KSERVE_RUNTIME, value: {{ .Values.kserve.runtime | quote }}}
- {name: MLCD_KSERVE_NAMESPACE, value: {{ .Values.kserve.namespace | quote }}}
{{- with .Values.kserve.deploymentMode }}
- {name: MLCD_KSERVE_DEPLOYMENT_MODE, value: {{ . | quote }}}
{{- end }}
{{- end }}
{{- with .Values.prometheus.url }}
- {name: MLCD_PROMETHEUS_URL, value: {{ . | quote }}}
{{- end }}
{{- end -}}

{{/* The Kubeflow engine's settings, when its endpoint is set; the token by reference only. */}}
{{- define "mlcd.kubeflowEnv" -}}
{{- with .Values.kubeflow }}
{{- if .endpoint }}
- {name: MLCD_KFP_ENDPOINT, value: {{ .endpoint | quote }}}
- {name: MLCD_KFP_NAMESPACE, value: {{ .namespace | quote }}}
{{- if .tokenSecret.name }}
- {name: MLCD_KFP_TOKEN_SECRET, value: {{ include "mlcd.kfpTokenRef" $ | quote }}}
{{- end }}
- {name: MLCD_KUBEFLOW_TRAINING, value: {{ .training | quote }}}
- {name: MLCD_KUBEFLOW_RUNTIME, value: {{ .trainingRuntime | quote }}}
{{- with .serviceAccount }}
- {name: MLCD_KUBEFLOW_SERVICE_ACCOUNT, value: {{ . | quote }}}
{{- end }}
{{- with .podAnnotations }}
{{- $pairs := list }}
{{- range $key, $value := . }}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) }}
{{- end }}
- {name: MLCD_KUBEFLOW_POD_ANNOTATIONS, value: {{ join "," $pairs | quote }}}
{{- end }}
- {name: MLCD_KUBEFLOW_POLL, value: {{ .poll | quote }}}
{{- end }}
{{- end }}
{{- end -}}
