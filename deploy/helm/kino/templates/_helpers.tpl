{{- define "kino.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "kino.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kino.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kino.stateClaim" -}}
{{- .Values.storage.existingClaim | default (printf "%s-state" (include "kino.fullname" .)) -}}
{{- end -}}

{{/* Ranks one Denoiser replica spans: model.parallel.cfg x ulysses. */}}
{{- define "kino.parallelWorld" -}}
{{- $p := .Values.model.parallel | default dict -}}
{{- mul (int ($p.cfg | default 1)) (int ($p.ulysses | default 1)) -}}
{{- end -}}

{{/* The Serve config file, with this release's settings: one source for local and Kubernetes. */}}
{{- define "kino.serveConfig" -}}
{{- $doc := .Files.Get "files/serve-config.yaml" | fromYaml -}}
{{- $app := index $doc.applications 0 -}}
{{- $cfg := $app.args.config -}}
{{- $model := dict "preset" .Values.model.preset "dtype" .Values.model.dtype "device" .Values.model.device -}}
{{- if .Values.model.checkpointDir }}{{- $_ := set $model "checkpoint_dir" .Values.model.checkpointDir -}}{{- end -}}
{{- $_ := set $model "dit_backend" (.Values.model.ditBackend | default "auto") -}}
{{- $trt := dict "engine_cache_dir" "/var/kino/state/engines" -}}
{{- with .Values.model.tensorrt }}{{- if .profiles }}{{- $_ := set $trt "profiles" .profiles -}}{{- end -}}{{- end -}}
{{- $_ := set $model "tensorrt" $trt -}}
{{- $world := include "kino.parallelWorld" . | int -}}
{{- with .Values.model.parallel }}{{- $_ := set $model "parallel" (dict "cfg" (int (.cfg | default 1)) "ulysses" (int (.ulysses | default 1))) -}}{{- end -}}
{{- with .Values.promptEnhancer -}}
{{- $enh := dict "enabled" .enabled "backend" .backend "max_new_tokens" (int .maxNewTokens) -}}
{{- if eq .backend "vllm" -}}
{{- $_ := set $enh "url" (printf "http://%s-vllm:8000/v1" (include "kino.fullname" $)) -}}
{{- $_ := set $enh "model" .vllm.servedModelName -}}
{{- end -}}
{{- $_ := set $model "enhancer" $enh -}}
{{- end -}}
{{- $_ := set $cfg "model" $model -}}
{{- $_ := set $cfg "grpc" (dict "host" "0.0.0.0" "port" (int .Values.ports.grpc)) -}}
{{- $_ := set $cfg "rest" (dict "host" "0.0.0.0" "port" (int .Values.ports.rest) "enabled" true) -}}
{{- $auth := dict "required" .Values.auth.required -}}
{{- if .Values.auth.bootstrapKeysSecret }}{{- $_ := set $auth "bootstrap_keys_file" "/etc/kino/keys/keys" -}}{{- end -}}
{{- $_ := set $cfg "auth" $auth -}}
{{- $storage := dict "database_url" "sqlite:////var/kino/state/jobs.db" "artifacts_dir" "/var/kino/artifacts" -}}
{{- with .Values.artifacts.s3 }}{{- if .bucket -}}
{{- /* The keys are not here: they come from the Secret as KINO_STORAGE__S3__* (kino.env). */ -}}
{{- $_ := set $storage "s3" (dict "bucket" .bucket "endpoint" (.endpoint | default "") "region" .region "prefix" (.prefix | default "") "allow_http" (.allowHttp | default false)) -}}
{{- end }}{{- end -}}
{{- $_ := set $cfg "storage" $storage -}}
{{- $prov := dict "dev_chain_dir" "/var/kino/state/credentials" -}}
{{- if .Values.signing.existingSecret -}}
{{- $_ := set $prov "cert_chain" (printf "/etc/kino/signing/%s" .Values.signing.certChainKey) -}}
{{- $_ := set $prov "private_key" (printf "/etc/kino/signing/%s" .Values.signing.privateKeyKey) -}}
{{- end -}}
{{- $_ := set $cfg "provenance" $prov -}}
{{- $_ := mergeOverwrite $cfg .Values.serve.config -}}
{{- $workers := dict "TextEncoder" .Values.workerGroups.textEncoder "Denoiser" .Values.workerGroups.dit "Decoder" .Values.workerGroups.decoder -}}
{{- range $d := $app.deployments -}}
{{- /* Each deployment's node group resource (kino_head, kino_dit, ...) comes with the file: the groups below advertise them. */ -}}
{{- $opts := $d.ray_actor_options | default dict -}}
{{- with (get $workers $d.name) -}}
{{- if gt (int .gpus) 0 -}}{{- $_ := set $opts "num_gpus" (int .gpus) -}}{{- end -}}
{{- if and (eq $d.name "Denoiser") (gt $world 1) (gt (int .gpus) 0) -}}
{{- /* The replica is rank 0 on one GPU; its placement group takes the pod's other GPUs for the followers. */ -}}
{{- if ne (int .gpus) $world }}{{- fail (printf "workerGroups.dit.gpus must be model.parallel.cfg x ulysses = %d (one Denoiser replica per DiT pod spans its GPUs), got %d" $world (int .gpus)) }}{{- end -}}
{{- $limit := dig "limits" "nvidia.com/gpu" "0" (.resources | default dict) | int -}}
{{- if ne $limit $world }}{{- fail (printf "workerGroups.dit.resources.limits.nvidia.com/gpu must be %d, the GPUs Ray is told the pod has (workerGroups.dit.gpus), got %d" $world $limit) }}{{- end -}}
{{- $_ := set $opts "num_gpus" 1 -}}
{{- end -}}
{{- /* One replica per pod of its group: Serve's autoscaling range follows the group's. */ -}}
{{- if $d.autoscaling_config -}}
{{- $_ := set $d.autoscaling_config "min_replicas" (int .minReplicas) -}}
{{- $_ := set $d.autoscaling_config "max_replicas" (int .maxReplicas) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $d "ray_actor_options" $opts -}}
{{- with (get $.Values.serve.deployments $d.name) -}}{{- $_ := mergeOverwrite $d . -}}{{- end -}}
{{- end -}}
{{- $_ := set $doc "http_options" (dict "host" "0.0.0.0" "port" 8000) -}}
{{- toYaml $doc -}}
{{- end -}}

{{/* Environment every Ray container gets: secrets reach Kino as KINO_* overrides, never in the Serve config. */}}
{{- define "kino.env" -}}
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
{{- if .Values.database.existingSecret }}
- name: KINO_STORAGE__DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.secretKey }}
{{- end }}
{{- with .Values.artifacts.s3 }}{{- if and .bucket .existingSecret }}
- name: KINO_STORAGE__S3__ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .accessKeyIdKey }}
- name: KINO_STORAGE__S3__SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .secretAccessKeyKey }}
{{- end }}{{- end }}
{{- end -}}

{{- define "kino.volumeMounts" -}}
- name: state
  mountPath: /var/kino
{{- if .Values.modelVolume.existingClaim }}
- name: models
  mountPath: /models
  readOnly: true
{{- end }}
{{- if .Values.signing.existingSecret }}
- name: signing
  mountPath: /etc/kino/signing
  readOnly: true
{{- end }}
{{- if .Values.auth.bootstrapKeysSecret }}
- name: bootstrap-keys
  mountPath: /etc/kino/keys
  readOnly: true
{{- end }}
{{- end -}}

{{/* "true" when the release has a state claim (values.yaml, storage); else every pod has an emptyDir. */}}
{{- define "kino.sharedState" -}}
{{- if .Values.storage.enabled -}}true
{{- else if not (and .Values.artifacts.s3.bucket .Values.database.existingSecret) -}}
{{- fail "storage.enabled=false needs artifacts.s3.bucket and database.existingSecret: otherwise artifacts or jobs would live on one pod only" -}}
{{- else -}}false
{{- end -}}
{{- end -}}

{{/* "true" when a pod of `component` mounts the state claim: the head always (the SQLite job database, which
only the head's replicas open); worker pods only while artifacts are files on it (no artifacts.s3.bucket). */}}
{{- define "kino.mountsClaim" -}}
{{- and (eq (include "kino.sharedState" .root) "true") (or (eq .component "head") (not .root.Values.artifacts.s3.bucket)) -}}
{{- end -}}

{{/* The claim's access modes: as set, else ReadWriteOnce when only the head mounts it, else ReadWriteMany. */}}
{{- define "kino.stateAccessModes" -}}
{{- if .Values.storage.accessModes -}}{{ toYaml .Values.storage.accessModes }}
{{- else if .Values.artifacts.s3.bucket -}}- ReadWriteOnce
{{- else -}}- ReadWriteMany
{{- end -}}
{{- end -}}

{{/* A pod's volumes: (dict "root" $ "component" <name>) */}}
{{- define "kino.volumes" -}}
- name: state
{{- if eq (include "kino.mountsClaim" .) "true" }}
  persistentVolumeClaim:
    claimName: {{ include "kino.stateClaim" .root }}
{{- else }}
  emptyDir: {}
{{- end }}
{{- with .root }}
{{- if .Values.modelVolume.existingClaim }}
- name: models
  persistentVolumeClaim:
    claimName: {{ .Values.modelVolume.existingClaim }}
    readOnly: true
{{- end }}
{{- if .Values.signing.existingSecret }}
- name: signing
  secret:
    secretName: {{ .Values.signing.existingSecret }}
    defaultMode: 0400
{{- end }}
{{- if .Values.auth.bootstrapKeysSecret }}
- name: bootstrap-keys
  secret:
    secretName: {{ .Values.auth.bootstrapKeysSecret }}
    defaultMode: 0400
{{- end }}
{{- end }}
{{- end -}}

{{/* A Ray container for a group: (dict "root" $ "group" <values> "component" <name>) */}}
{{- define "kino.container" -}}
- name: ray-{{ .component }}
  image: "{{ .root.Values.image.repository }}:{{ .root.Values.image.tag }}"
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  env:
{{ include "kino.env" .root | indent 4 }}
    # The pod's node group: a process on a worker group refuses to open the job database (serving/db.py).
    - name: KINO_NODE_GROUP
      value: {{ .component | quote }}
{{- if eq (include "kino.spreadDiT" .) "true" }}
    - name: TORCH_NCCL_BLOCKING_WAIT   # a timed-out collective raises in the caller: the replica fails cleanly
      value: "1"
{{- range $k, $v := .root.Values.model.parallel.ncclEnv }}
    - name: {{ $k }}
      value: {{ $v | quote }}
{{- end }}
{{- end }}
  resources:
{{ toYaml .group.resources | indent 4 }}
  volumeMounts:
{{ include "kino.volumeMounts" .root | indent 4 }}
{{- if eq (include "kino.spreadDiT" .) "true" }}
    - name: dshm
      mountPath: /dev/shm
{{- end }}
  ports:
    - name: metrics
      containerPort: {{ .root.Values.ports.metrics }}
{{- if eq .component "head" }}
    - name: grpc
      containerPort: {{ .root.Values.ports.grpc }}
    - name: rest
      containerPort: {{ .root.Values.ports.rest }}
    - name: dashboard
      containerPort: 8265
    - name: gcs
      containerPort: 6379
    - name: serve
      containerPort: 8000
  # Ready only while the Serve application runs (grpc.health.v1 reports SERVING).
  readinessProbe:
    grpc:
      port: {{ .root.Values.ports.grpc }}
    initialDelaySeconds: 10
    periodSeconds: 5
    failureThreshold: 3
{{- end }}
{{- end -}}

{{- define "kino.podSpec" -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
{{ toYaml . | indent 2 }}
{{- end }}
{{- with .group.nodeSelector }}
nodeSelector:
{{ toYaml . | indent 2 }}
{{- end }}
{{- with .group.tolerations }}
tolerations:
{{ toYaml . | indent 2 }}
{{- end }}
{{- if eq .component "head" }}
# The database's schema is brought to this release before Ray starts (once per head pod; a no-op when it is
# there already): every replica only checks it (serving/migrations, `kino admin migrate`).
initContainers:
  - name: migrate
    image: "{{ .root.Values.image.repository }}:{{ .root.Values.image.tag }}"
    imagePullPolicy: {{ .root.Values.image.pullPolicy }}
    command: ["kino", "admin", "--state-dir", "/var/kino/state", "migrate"]
    env:
{{ include "kino.env" .root | indent 6 }}
    volumeMounts:
{{ include "kino.volumeMounts" .root | indent 6 }}
    resources:
      requests: {cpu: 100m, memory: 256Mi}
      limits: {cpu: "1", memory: 512Mi}
{{- end }}
containers:
{{ include "kino.container" . }}
volumes:
{{ include "kino.volumes" (dict "root" .root "component" .component) | indent 2 }}
{{- if eq (include "kino.spreadDiT" .) "true" }}
  - name: dshm
    emptyDir:
      medium: Memory
      sizeLimit: {{ .root.Values.model.parallel.shmSize | default "16Gi" }}
{{- end }}
{{- end -}}

{{/* "true" for the DiT group's pods when each Denoiser replica spans several ranks. */}}
{{- define "kino.spreadDiT" -}}
{{- and (eq .component "dit") (gt (include "kino.parallelWorld" .root | int) 1) -}}
{{- end -}}
