"""The Helm chart: lint, render the default and GPU profiles, validate every object offline.

Core objects against the bundled Kubernetes schemas (kubernetes-validate, strict), the RayService
against KubeRay's CRD schema (shared/k8s-schemas), ServiceMonitor/PrometheusRule against the
prometheus-operator models, serveConfigV2 against Ray Serve's own ServeDeploySchema.
"""

from __future__ import annotations

import json
import subprocess

import kubernetes_validate
import pytest
import yaml
from openapi_schema_validator import OAS30Validator

from tests.tools import ROOT, helm

CHART = ROOT / "deploy" / "helm" / "kino"
KUBERAY = ROOT.parent / "shared" / "k8s-schemas" / "kuberay"
K8S_VERSION = kubernetes_validate.latest_version()
PROFILES = {"default": [], "gpu": ["-f", str(CHART / "values-gpu.yaml")]}


OPERATOR = ["--api-versions", "monitoring.coreos.com/v1"]  # a cluster with prometheus-operator


def render(*args: str, operator: bool = True) -> list[dict]:
    extra = OPERATOR if operator else []
    out = subprocess.run([helm(), "template", "kino", str(CHART), *extra, *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def crd_schemas() -> dict[tuple[str, str], dict]:
    # shared/ lies beside the checkout (as in CI); without it a RayService cannot be checked at all.
    assert (KUBERAY / "ray.io_rayservices.yaml").is_file(), f"KubeRay CRDs not found in {KUBERAY}"
    schemas = {}
    for path in sorted(KUBERAY.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for v in crd["spec"]["versions"]:
            schemas[(f"{crd['spec']['group']}/{v['name']}", crd["spec"]["names"]["kind"])] = \
                v["schema"]["openAPIV3Schema"]
    return schemas


def _keys(value, prefix=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield f"{prefix}.{k}"
            yield from _keys(v, f"{prefix}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _keys(v, f"{prefix}[{i}]")


def validate_monitoring(doc: dict) -> None:
    """prometheus-operator objects through its models; a field the model drops is an unknown field."""
    from cloudcoil.models.prometheus_operator import v1

    model = getattr(v1, doc["kind"]).model_validate(doc)
    dumped = model.model_dump(by_alias=True, exclude_none=True, mode="json")
    unknown = set(_keys(doc["spec"], "spec")) - set(_keys(dumped["spec"], "spec"))
    assert not unknown, f"{doc['kind']}: unknown fields {sorted(unknown)}"


@pytest.mark.parametrize("profile", list(PROFILES))
def test_lint(profile):
    out = subprocess.run([helm(), "lint", str(CHART), *PROFILES[profile]], capture_output=True, text=True)
    assert out.returncode == 0 and "0 chart(s) failed" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("profile", list(PROFILES))
def test_every_rendered_object_validates(profile):
    docs = render(*PROFILES[profile])
    crds = crd_schemas()
    kinds = sorted(d["kind"] for d in docs)
    assert {"RayService", "Service", "ServiceMonitor", "PrometheusRule", "ConfigMap"} <= set(kinds)
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in crds:
            errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in OAS30Validator(crds[key]).iter_errors(doc)]
            assert not errors, errors
        elif doc["apiVersion"].startswith("monitoring.coreos.com/"):
            validate_monitoring(doc)
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_monitoring_objects_only_where_prometheus_operator_is_installed():
    kinds = {d["kind"] for d in render(operator=False)}
    assert "RayService" in kinds and not kinds & {"ServiceMonitor", "PrometheusRule"}


def _serve_config(docs: list[dict]) -> dict:
    [rs] = [d for d in docs if d["kind"] == "RayService"]
    return yaml.safe_load(rs["spec"]["serveConfigV2"])


@pytest.mark.parametrize("profile", list(PROFILES))
def test_serve_config_is_the_local_one_with_release_settings(profile):
    from ray.serve.schema import ServeDeploySchema

    docs = render(*PROFILES[profile])
    serve = _serve_config(docs)
    ServeDeploySchema.parse_obj(serve)  # what the Serve controller accepts
    local = yaml.safe_load((ROOT / "deploy" / "serve" / "kino.yaml").read_text())
    [app], [local_app] = serve["applications"], local["applications"]
    assert app["import_path"] == local_app["import_path"] and app["runtime_env"] == local_app["runtime_env"]
    assert [d["name"] for d in app["deployments"]] == [d["name"] for d in local_app["deployments"]]
    cfg = app["args"]["config"]
    assert cfg["auth"]["required"] is True and cfg["grpc"]["port"] == 50051 and cfg["rest"]["port"] == 8100
    assert cfg["batching"] == local_app["args"]["config"]["batching"]
    from serving.config import load_config

    if cfg["model"]["preset"] != "checkpoint":  # (a checkpoint directory exists only in the cluster)
        load_config(cfg)  # Kino accepts it too


def test_stages_land_on_their_own_worker_groups_and_gpu_profile():
    default, gpu = render(), render(*PROFILES["gpu"])
    for docs, gpus in ((default, 0), (gpu, 1)):
        [rs] = [d for d in docs if d["kind"] == "RayService"]
        groups = {g["groupName"]: g for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
        assert set(groups) == {"text-encoder", "dit", "decoder"}
        head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]
        advertised = {"head": set(head["resources"])} | {n: set(g["resources"]) for n, g in groups.items()}
        assert len(set().union(*advertised.values())) == 4  # one custom resource per group
        deployments = {d["name"]: d for d in _serve_config(docs)["applications"][0]["deployments"]}
        wanted = {"Frontend": "head", "Dispatcher": "head", "TextEncoder": "text-encoder", "Denoiser": "dit",
                  "Decoder": "decoder"}
        for name, group in wanted.items():
            asks = set(deployments[name]["ray_actor_options"]["resources"])
            assert asks <= advertised[group] and len(asks) == 1, (name, asks)
        # Each pod says its group: a worker group's processes refuse the job database (serving/db.py).
        for name, spec in {"head": head, **groups}.items():
            [group_env] = [e["value"] for e in spec["template"]["spec"]["containers"][0]["env"]
                           if e["name"] == "KINO_NODE_GROUP"]
            assert group_env == name
        dit = groups["dit"]
        assert deployments["Denoiser"]["autoscaling_config"]["max_replicas"] == dit["maxReplicas"]
        assert deployments["Denoiser"]["ray_actor_options"].get("num_gpus", 0) == gpus
        container = dit["template"]["spec"]["containers"][0]
        if gpus:
            assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
            assert dit["template"]["spec"]["nodeSelector"] and dit["template"]["spec"]["tolerations"]
            env = {e["name"] for e in container["env"]}
            assert "KINO_STORAGE__DATABASE_URL" in env  # from the PostgreSQL secret, not the Serve config
            assert "postgresql" not in rs["spec"]["serveConfigV2"]
        probe = head["template"]["spec"]["containers"][0]["readinessProbe"]
        assert probe["grpc"]["port"] == 50051


def test_prompt_enhancer_on_vllm_and_tensorrt_settings_reach_kino():
    from serving.config import load_config

    default, gpu = render(), render(*PROFILES["gpu"])
    assert not [d for d in default if d["kind"] == "Deployment"]  # no vLLM unless asked for
    model = _serve_config(default)["applications"][0]["args"]["config"]["model"]
    assert model["enhancer"]["enabled"] is False and model["dit_backend"] == "auto"
    load_config({"model": model})
    [vllm] = [d for d in gpu if d["kind"] == "Deployment"]
    [service] = [d for d in gpu if d["kind"] == "Service" and d["metadata"]["name"] == vllm["metadata"]["name"]]
    container = vllm["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "--served-model-name=prompt-enhancer" in container["args"]
    model = _serve_config(gpu)["applications"][0]["args"]["config"]["model"]
    enhancer = model["enhancer"]
    assert enhancer["backend"] == "vllm" and enhancer["model"] == "prompt-enhancer"
    assert enhancer["url"] == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/v1"
    assert model["tensorrt"]["engine_cache_dir"].startswith("/var/kino/state")  # survives pod restarts
    assert model["tensorrt"]["profiles"] == [[768, 512, 5]]


def test_services_rules_and_dashboard_come_from_the_repository_files():
    docs = render()
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert services["kino-grpc"]["spec"]["ports"][0]["appProtocol"] == "grpc"
    assert services["kino-rest"]["spec"]["ports"][0]["targetPort"] == "rest"
    [rule] = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert rule["spec"] == yaml.safe_load((ROOT / "deploy" / "prometheus" / "kino-rules.yml").read_text())
    [board] = [d for d in docs if d["kind"] == "ConfigMap"]
    assert json.loads(board["data"]["kino-dashboard.json"]) == json.loads(
        (ROOT / "deploy" / "grafana" / "kino-dashboard.json").read_text())
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"


@pytest.mark.parametrize("bad, message", [
    (["--set", "workerGroups.dit.gpu=1"], "additional properties 'gpu' not allowed"),
    (["--set", "model.preset=checkpoint"], "checkpointDir"),
    (["--set", "ports.grpc=0"], "ports/grpc"),
    (["--set", "model.dtype=float64"], "model/dtype"),
    (["--set", "model.ditBackend=onnx"], "model/ditBackend"),
    (["--set", "promptEnhancer.backend=openai"], "promptEnhancer/backend"),
])
def test_values_schema_rejects_mistakes(bad, message):
    out = subprocess.run([helm(), "template", "kino", str(CHART), *bad], capture_output=True, text=True)
    assert out.returncode != 0 and message in out.stderr, out.stderr


SPREAD_GPU = [*PROFILES["gpu"], "--set", "model.parallel.cfg=2", "--set", "model.parallel.ulysses=2",
              "--set", "workerGroups.dit.gpus=4",
              "--set-string", "workerGroups.dit.resources.limits.nvidia\\.com/gpu=4",
              "--set-string", "workerGroups.dit.resources.requests.nvidia\\.com/gpu=4",
              "--set", "model.parallel.ncclEnv.NCCL_DEBUG=WARN"]


def test_a_dit_group_whose_replicas_span_the_gpus_of_a_pod():
    docs = render(*SPREAD_GPU)
    config = _serve_config(docs)
    app = config["applications"][0]
    assert app["args"]["config"]["model"]["parallel"] == {"cfg": 2, "ulysses": 2}
    deployments = {d["name"]: d for d in app["deployments"]}
    # Rank 0 takes one GPU; its placement group takes the pod's other three for the followers.
    assert deployments["Denoiser"]["ray_actor_options"]["num_gpus"] == 1
    assert deployments["Decoder"]["ray_actor_options"]["num_gpus"] == 1
    [rs] = [d for d in docs if d["kind"] == "RayService"]
    groups = {g["groupName"]: g for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert groups["dit"]["rayStartParams"]["num-gpus"] == "4"
    for name, group in groups.items():
        pod = group["template"]["spec"]
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        shm = [v for v in pod["volumes"] if v["name"] == "dshm"]
        if name == "dit":
            assert env["TORCH_NCCL_BLOCKING_WAIT"] == "1" and env["NCCL_DEBUG"] == "WARN"
            assert shm == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}]
            assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]
        else:
            assert "TORCH_NCCL_BLOCKING_WAIT" not in env and not shm
    crds = crd_schemas()
    OAS30Validator(crds[(rs["apiVersion"], rs["kind"])]).validate(rs)
    # One rank: nothing of this (the default profile's DiT pods are unchanged).
    plain = {g["groupName"]: g for g in [d for d in render() if d["kind"] == "RayService"][0]["spec"][
        "rayClusterConfig"]["workerGroupSpecs"]}
    assert not [v for v in plain["dit"]["template"]["spec"]["volumes"] if v["name"] == "dshm"]


@pytest.mark.parametrize("bad, message", [
    (SPREAD_GPU[:-8], "workerGroups.dit.gpus must be model.parallel.cfg x ulysses = 4"),
    (SPREAD_GPU[:-6], "workerGroups.dit.resources.limits.nvidia.com/gpu must be 4"),
    (["--set", "model.parallel.ulysses=9"], "model/parallel/ulysses"),
    (["--set", "model.parallel.cfg=3"], "model/parallel/cfg"),
    (["--set", "model.parallel.ncclEnv.FOO=1"], "model/parallel/ncclEnv"),
])
def test_a_spread_dit_group_refuses_what_cannot_run(bad, message):
    out = subprocess.run([helm(), "template", "kino", str(CHART), *bad], capture_output=True, text=True)
    assert out.returncode != 0 and message in out.stderr, out.stderr


def test_the_head_migrates_the_database_before_ray_starts():
    """`kino admin migrate` runs in the head pod's init container, on the database the replicas use (the SQLite
    file on the state volume, or the PostgreSQL secret's URL); the workers never write the schema."""
    default, gpu = render(), render(*PROFILES["gpu"])
    for docs, secret in ((default, False), (gpu, True)):
        [rs] = [d for d in docs if d["kind"] == "RayService"]
        head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
        [migrate] = head["initContainers"]
        assert migrate["command"] == ["kino", "admin", "--state-dir", "/var/kino/state", "migrate"]
        assert migrate["image"] == head["containers"][0]["image"]
        assert {m["mountPath"] for m in migrate["volumeMounts"]} >= {"/var/kino"}
        assert ("KINO_STORAGE__DATABASE_URL" in {e["name"] for e in migrate["env"]}) == secret
        assert "sqlite:////var/kino/state/jobs.db" in rs["spec"]["serveConfigV2"]  # what the state dir names
        for group in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
            assert "initContainers" not in group["template"]["spec"]


S3 = ["--set", "artifacts.s3.bucket=kino-videos", "--set", "artifacts.s3.endpoint=http://minio.storage:9000",
      "--set", "artifacts.s3.allowHttp=true", "--set", "artifacts.s3.prefix=prod",
      "--set", "artifacts.s3.existingSecret=kino-s3"]


def _pods(rs: dict) -> list[dict]:
    cluster = rs["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"]
                                                            for g in cluster["workerGroupSpecs"]]


def test_artifacts_in_an_s3_bucket():
    """The bucket's settings reach Kino's storage config, its keys only as KINO_STORAGE__S3__* from the Secret."""
    from serving.config import load_config

    docs = render(*S3)
    [rs] = [d for d in docs if d["kind"] == "RayService"]
    assert "kino-s3" not in rs["spec"]["serveConfigV2"] and "secret_access_key" not in rs["spec"]["serveConfigV2"]
    storage = _serve_config(docs)["applications"][0]["args"]["config"]["storage"]
    assert storage["s3"] == {"bucket": "kino-videos", "endpoint": "http://minio.storage:9000", "region": "us-east-1",
                             "prefix": "prod", "allow_http": True}
    environ = {"KINO_STORAGE__S3__ACCESS_KEY_ID": "AKIAEXAMPLE", "KINO_STORAGE__S3__SECRET_ACCESS_KEY": "c2VjcmV0"}
    s3 = load_config({"storage": storage}, environ=environ).storage.s3
    assert (s3.bucket, s3.prefix, s3.access_key_id, s3.secret_access_key) == (
        "kino-videos", "prod", "AKIAEXAMPLE", "c2VjcmV0")
    for pod in _pods(rs):
        for container in pod["containers"] + pod.get("initContainers", []):
            env = {e["name"]: e.get("valueFrom") for e in container["env"]}
            assert env["KINO_STORAGE__S3__ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "kino-s3", "key": "accessKeyId"}}
            assert env["KINO_STORAGE__S3__SECRET_ACCESS_KEY"] == {
                "secretKeyRef": {"name": "kino-s3", "key": "secretAccessKey"}}
    # Without a bucket: no s3 settings, no key variables; the state claim stays ReadWriteMany.
    plain = render()
    assert "s3" not in _serve_config(plain)["applications"][0]["args"]["config"]["storage"]
    assert "KINO_STORAGE__S3" not in yaml.safe_dump(plain)
    [claim] = [d for d in plain if d["kind"] == "PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_with_a_bucket_only_the_head_mounts_the_state_volume_and_it_need_not_be_shared():
    """Worker nodes never open the job database, and with a bucket their artifacts are objects: only the head
    mounts the state claim (SQLite, its credentials), which ReadWriteOnce serves."""
    docs = render(*S3)
    [claim] = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    [rs] = [d for d in docs if d["kind"] == "RayService"]
    cluster = rs["spec"]["rayClusterConfig"]
    pods = {"head": cluster["headGroupSpec"]["template"]["spec"]} | {
        g["groupName"]: g["template"]["spec"] for g in cluster["workerGroupSpecs"]}
    for name, pod in pods.items():
        [state] = [v for v in pod["volumes"] if v["name"] == "state"]
        expected = {"persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}} if name == "head" \
            else {"emptyDir": {}}
        assert state == {"name": "state", **expected}, name


STATELESS = [*S3, "--set", "database.existingSecret=kino-db", "--set", "storage.enabled=false"]


def test_with_a_bucket_and_a_database_pods_need_no_volume_at_all():
    docs = render(*STATELESS)
    assert "PersistentVolumeClaim" not in {d["kind"] for d in docs}
    [rs] = [d for d in docs if d["kind"] == "RayService"]
    for pod in _pods(rs):
        [state] = [v for v in pod["volumes"] if v["name"] == "state"]
        assert state == {"name": "state", "emptyDir": {}}
    crds = crd_schemas()
    OAS30Validator(crds[(rs["apiVersion"], rs["kind"])]).validate(rs)


@pytest.mark.parametrize("missing", ["artifacts.s3.bucket", "database.existingSecret"])
def test_pods_without_a_volume_need_a_bucket_and_a_database(missing):
    args = [*STATELESS, "--set", f"{missing}="]  # the later --set wins: that one left empty
    out = subprocess.run([helm(), "template", "kino", str(CHART), *args], capture_output=True, text=True)
    assert out.returncode != 0 and "storage.enabled=false needs artifacts.s3.bucket" in out.stderr, out.stderr
