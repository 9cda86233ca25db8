"""launch/kubernetes/: every manifest is what the API server would accept and what its pods can run.

There is no Kubernetes here. Each manifest is validated against its operator's own CRD
(tests/fixtures/crds/, with their origin in the README there): the OpenAPI v3 schema, unknown
fields rejected as ``kubectl apply`` rejects them, and the ``x-kubernetes-validations`` CEL rules
cel-python can run (tests/crdschema.py); every embedded pod template (and a JobSet's Job
templates) with ``kubernetes-validate``, strict. Then what the pods run, as tests/podenv.py
builds it from the manifest: the training's torchrun line is parsed by torch's own parser and
the preflight's line by ddpcheck's (once ``preflight --in-job`` exists:
``ddpcheck.config.jobenv``), each with the environment its operator gives the pod, and both
must place every pod where the gang needs it. Each validator is shown to reject a broken
manifest, so a pass means something.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

import crdschema
import podenv

CRDS_DIR = Path(__file__).parent / "fixtures" / "crds"
K8S_VERSION = "1.33.0"  # the core types' schema kubernetes-validate checks against
GPU = "nvidia.com/gpu"
RDMA = "rdma/rdma_shared_device_a"
MASTER_PORT = 29500

jsonschema = pytest.importorskip("jsonschema", reason="the test extra: pip install -e '.[test]'")
celpy = pytest.importorskip("celpy", reason="the test extra (cel-python): pip install -e '.[test]'")
kubernetes_validate = pytest.importorskip("kubernetes_validate",
                                          reason="the test extra: pip install -e '.[test]'")

MANIFESTS = {path.name: path for path in podenv.manifest_paths()}
EXPECTED = {"pytorchjob.yaml": ["PyTorchJob"],
            "trainjob.yaml": ["ClusterTrainingRuntime", "TrainJob"],
            "jobset.yaml": ["JobSet"]}
DOCS = [(name, i) for name, path in MANIFESTS.items() for i, _ in enumerate(podenv.load(path))]


def _crds() -> dict[str, crdschema.CRD]:
    found: dict[str, crdschema.CRD] = {}
    for path in sorted(CRDS_DIR.glob("*.yaml")):
        found.update(crdschema.load_crds(path))
    return found


CRDS = _crds()


def _doc(name: str, index: int) -> dict:
    return podenv.load(MANIFESTS[name])[index]


def _crd_of(doc: dict) -> crdschema.CRD:
    key = f"{doc['apiVersion']}/{doc['kind']}"
    assert key in CRDS, f"no CRD fixture for {key} (have {sorted(CRDS)})"
    return CRDS[key]


def test_the_three_manifests_are_there() -> None:
    assert {name: [d["kind"] for d in podenv.load(path)] for name, path in MANIFESTS.items()} \
        == EXPECTED


def test_every_crd_fixture_is_the_file_its_readme_names() -> None:
    """Each fixture has a row in the README (its origin), and its hash is the row's: the file
    is the operator's, unchanged."""
    import hashlib

    rows = {cells[1].strip("` "): cells[-2].strip()
            for cells in (line.split("|") for line in
                          (CRDS_DIR / "README.md").read_text().splitlines())
            if len(cells) > 7 and cells[1].strip().startswith("`")}
    assert sorted(rows) == sorted(p.name for p in CRDS_DIR.glob("*.yaml"))
    for name, digest in rows.items():
        assert hashlib.sha256((CRDS_DIR / name).read_bytes()).hexdigest()[:16] == digest, name


# ---- the CRDs' schemas and rules ----------------------------------------------------------

@pytest.mark.parametrize("name,index", DOCS)
def test_every_manifest_validates_against_its_crd_schema(name: str, index: int) -> None:
    doc = _doc(name, index)
    assert crdschema.schema_errors(_crd_of(doc), doc) == [], f"{name} ({doc['kind']})"


@pytest.mark.parametrize("name,index", DOCS)
def test_every_manifest_passes_its_crd_cel_rules(name: str, index: int) -> None:
    doc = _doc(name, index)
    report = crdschema.cel_report(_crd_of(doc), doc)
    assert report.failures == [], f"{name} ({doc['kind']})"
    for path, rule, why in report.not_run:  # only transition rules, which need an update
        assert "oldSelf" in rule, f"{name}: {path}: {rule!r} was not run: {why}"


def test_the_cel_rules_run_on_the_manifests() -> None:
    """cel-python runs the rules that apply (the count is what the fixtures' rules give)."""
    ran = {f"{name}:{_doc(name, i)['kind']}": crdschema.cel_report(_crd_of(_doc(name, i)),
                                                                    _doc(name, i)).run
           for name, i in DOCS}
    assert ran["trainjob.yaml:ClusterTrainingRuntime"] >= 2, ran  # envInjection, one policy
    assert ran["trainjob.yaml:TrainJob"] >= 1, ran
    assert ran["jobset.yaml:JobSet"] >= 1, ran


def _broken(name: str, index: int, edit) -> dict:
    doc = copy.deepcopy(_doc(name, index))
    edit(doc)
    return doc


def _first_container(doc: dict) -> dict:
    return podenv.pod_specs(doc)[0]["containers"][0]


@pytest.mark.parametrize("name,index,edit,expected", [
    ("pytorchjob.yaml", 0, lambda d: _first_container(d).update(comand=["x"]),
     "'comand' was unexpected"),
    ("pytorchjob.yaml", 0,
     lambda d: d["spec"]["pytorchReplicaSpecs"]["Worker"].update(replicas="3"),
     "spec.pytorchReplicaSpecs.Worker.replicas: '3' is not of type 'integer'"),
    ("jobset.yaml", 0, lambda d: d["spec"].update(replicatedJob=[]),
     "'replicatedJob' was unexpected"),
    ("trainjob.yaml", 1, lambda d: d["spec"]["trainer"].update(numNodes="four"),
     "spec.trainer.numNodes: 'four' is not of type 'integer'"),
    ("trainjob.yaml", 0, lambda d: d["spec"]["mlPolicy"]["torch"]["envInjection"]["targets"]
     .append({"jobName": "node", "containerNames": ["other"]}),
     "duplicate key ('node',) (x-kubernetes-list-type: map)"),
])
def test_the_schema_check_rejects_a_broken_manifest(name, index, edit, expected) -> None:
    doc = _broken(name, index, edit)
    errors = crdschema.schema_errors(_crd_of(doc), doc)
    assert any(expected in e for e in errors), errors


def test_the_cel_check_rejects_what_a_rule_forbids() -> None:
    """The runtime's rule: PET_* always reach the node container, so envInjection must not
    name it."""
    doc = _broken("trainjob.yaml", 0, lambda d: d["spec"]["mlPolicy"]["torch"]["envInjection"]
                  ["targets"][0].update(containerNames=["ddpcheck-preflight", "node"]))
    report = crdschema.cel_report(_crd_of(doc), doc)
    assert [message for _, message in report.failures] == [
        "containerNames must not include the main node container because PET_* envs are "
        "always injected into it"]


# ---- the core types: pod templates, Job templates -----------------------------------------

def _core_objects():
    for name, path in MANIFESTS.items():
        for doc in podenv.load(path):
            for where, template in podenv.pod_templates(doc):
                yield (f"{name}:{doc['kind']}:{where}",
                       {"apiVersion": "v1", "kind": "PodTemplate",
                        "metadata": {"name": "template"}, "template": template})
            jobs = []
            if doc["kind"] == "JobSet":
                jobs = doc["spec"]["replicatedJobs"]
            elif doc["kind"] == "ClusterTrainingRuntime":
                jobs = doc["spec"]["template"]["spec"]["replicatedJobs"]
            for rjob in jobs:
                yield (f"{name}:{doc['kind']}:replicatedJobs[{rjob['name']}]",
                       {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "job"},
                        "spec": rjob["template"]["spec"]})


CORE = list(_core_objects())


def test_there_are_core_objects_to_validate() -> None:
    assert len(CORE) >= 6, [where for where, _ in CORE]


@pytest.mark.parametrize("where,obj", CORE, ids=[where for where, _ in CORE])
def test_every_embedded_core_type_validates(where: str, obj: dict) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_kubernetes_validate_rejects_a_broken_pod_template() -> None:
    where, obj = CORE[0]
    obj = copy.deepcopy(obj)
    obj["template"]["spec"]["containers"][0]["resources"]["limit"] = {GPU: 8}
    with pytest.raises(kubernetes_validate.ValidationError, match="'limit' was unexpected"):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


# ---- what the manifests ask of the cluster ------------------------------------------------

@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_gpus_rdma_shared_memory_and_ports_are_requested(name: str) -> None:
    docs = podenv.load(MANIFESTS[name])
    specs = [s for d in docs for s in podenv.pod_specs(d)]
    assert specs
    for spec in specs:
        running = [c for c in spec.get("initContainers") or [] if podenv.preflight_argv(
            podenv.ContainerRun(c["name"], tuple((c.get("command") or []) + (c.get("args") or [])),
                                {}, True))] or spec["containers"]
        for c in running:  # the containers the preflight runs in see the GPUs and HCAs
            limits = (c.get("resources") or {}).get("limits") or {}
            if not limits and c["name"] == "node":  # the TrainJob sets the node's resources
                limits = next(d for d in docs if d["kind"] == "TrainJob")["spec"]["trainer"][
                    "resourcesPerNode"]["limits"]
            assert GPU in limits and RDMA in limits, f"{name}: {c['name']}: {limits}"
            assert "IPC_LOCK" in c["securityContext"]["capabilities"]["add"]
        assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in spec["volumes"])
        ports = {p["containerPort"] for c in spec["containers"] for p in c.get("ports") or []}
        trainer_adds = {MASTER_PORT} if any(d["kind"] == "TrainJob" for d in docs) else set()
        assert {MASTER_PORT, MASTER_PORT + 1} <= ports | trainer_adds, f"{name}: {ports}"


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_the_counts_agree_where_a_user_edits_them(name: str) -> None:
    """Node count and ranks per node written in more than one place say the same thing, and
    the GPUs requested are the ranks per node (docs/kubernetes.md: what to edit)."""
    for nnodes, nproc in ((4, 8), (3, 2)):  # as shipped, and as scaled()
        docs = podenv.load(MANIFESTS[name]) if nnodes == 4 else podenv.scaled(
            podenv.load(MANIFESTS[name]), nnodes, nproc)
        pods = podenv.pods(docs)
        assert [p.node_rank for p in pods] == list(range(nnodes)), name
        for pod in pods:
            for c in pod.init_containers + pod.containers:
                env = c.env
                if "PET_NNODES" in env:
                    assert env["PET_NNODES"] == str(nnodes)
                    assert env["PET_NPROC_PER_NODE"] == str(nproc)
                if "NNODES" in env:
                    assert (env["NNODES"], env["NPROC_PER_NODE"]) == (str(nnodes), str(nproc))
        for doc in docs:
            for spec in podenv.pod_specs(doc):
                for c in (spec.get("initContainers") or []) + spec["containers"]:
                    gpus = ((c.get("resources") or {}).get("limits") or {}).get(GPU)
                    assert gpus in (None, nproc), f"{name}: {c['name']} asks {gpus} GPUs"


def test_the_trainjob_preflight_runs_the_training_image() -> None:
    runtime, trainjob = podenv.load(MANIFESTS["trainjob.yaml"])
    init = podenv.pod_specs(runtime)[0]["initContainers"][0]
    assert init["image"] == trainjob["spec"]["trainer"]["image"]


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_the_preflight_runs_before_the_training_on_every_pod(name: str) -> None:
    for pod in podenv.pods(podenv.load(MANIFESTS[name])):
        preflights = [c for c in pod.init_containers + pod.containers if podenv.preflight_argv(c)]
        assert len(preflights) == 1, f"{name}: {pod.name}: {preflights}"
        (preflight,) = preflights
        argv = podenv.preflight_argv(preflight)
        assert argv[:3] == ["ddpcheck", "preflight", "--in-job"], argv
        if preflight.init:  # init container: the training containers start only after it
            assert all("torchrun" in " ".join(c.argv) for c in pod.containers)
        else:  # a first step: the shell stops on its failure, then becomes torchrun
            script = preflight.argv[2]
            first, second = [line.strip() for line in script.strip().splitlines()]
            assert first.endswith("|| exit $?"), first
            assert second.startswith("exec torchrun "), second


# ---- the command lines, as their parsers read them, in each pod's environment -------------

def _torchrun_args(argv: list[str], env: dict, monkeypatch):
    """torch's own torchrun parser on ``argv``; it reads PET_* from the environment, as in
    the pod."""
    from torch.distributed import run as torchrun

    with monkeypatch.context() as m:
        for key in [k for k in __import__("os").environ if k.startswith("PET_")]:
            m.delenv(key)
        for key, value in env.items():
            m.setenv(key, value)
        return torchrun.get_args_parser().parse_args(argv)


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_the_training_torchrun_line_places_every_pod(name: str, monkeypatch) -> None:
    pods = podenv.pods(podenv.load(MANIFESTS[name]))
    for pod in pods:
        (main,) = [c for c in pod.containers]
        argv = list(main.argv)
        if argv[:2] == ["bash", "-c"]:
            line = argv[2].strip().splitlines()[-1]
            argv = line.split()[1:]  # after exec
        assert argv[0] == "torchrun", argv
        args = _torchrun_args(argv[1:], dict(main.env), monkeypatch)
        assert (str(args.nnodes), int(args.node_rank), str(args.nproc_per_node)) == (
            str(len(pods)), pod.node_rank, "8"), f"{name}: {pod.name}"
        assert args.master_addr == pods[0].dns_names[0], f"{name}: {pod.name}"
        assert int(args.master_port) == MASTER_PORT
        assert args.training_script == "/workspace/train.py"


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_the_preflight_line_parses_and_places_every_pod(name: str) -> None:
    from ddpcheck.cli import build_parser
    from ddpcheck.config import jobenv

    pods = podenv.pods(podenv.load(MANIFESTS[name]))
    for pod in pods:
        (preflight,) = [c for c in pod.init_containers + pod.containers
                        if podenv.preflight_argv(c)]
        argv = podenv.preflight_argv(preflight)
        args = build_parser().parse_args(argv[1:])  # argparse exits 2 on what it rejects
        assert getattr(args, "in_job", False) is True
        flags = {key: getattr(args, key, None) for key in jobenv.SOURCES}
        place = jobenv.resolve(flags, dict(preflight.env))
        assert (place.nnodes, place.node_rank, place.nproc_per_node) == (len(pods),
                                                                         pod.node_rank, 8)
        assert (place.master_addr, place.master_port) == (pods[0].dns_names[0], MASTER_PORT)


# ---- what the operators' admission webhooks check, beyond the schema ----------------------

DNS1035 = __import__("re").compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def test_the_pytorchjob_passes_the_operators_admission_rules() -> None:
    """kubeflow/trainer v1.9.4, pkg/webhooks/pytorch/pytorchjob_webhook.go: a DNS-1035 name,
    containers with images, one named pytorch, one Master."""
    (job,) = podenv.load(MANIFESTS["pytorchjob.yaml"])
    assert DNS1035.match(job["metadata"]["name"]) and len(job["metadata"]["name"]) <= 63
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1
    for role, spec in specs.items():
        containers = spec["template"]["spec"]["containers"]
        assert all(c.get("image") for c in containers), role
        assert any(c["name"] == "pytorch" for c in containers), role


def test_the_trainjob_passes_the_trainers_admission_rules() -> None:
    """kubeflow/trainer v2.3.0, pkg/runtime/framework/plugins/torch/torch.go: no PET_* in
    trainer.env, and every envInjection target is a container of that replicated job."""
    runtime, trainjob = podenv.load(MANIFESTS["trainjob.yaml"])
    assert not {e["name"] for e in trainjob["spec"]["trainer"].get("env") or []} & {
        "PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR",
        "PET_MASTER_PORT"}
    jobs = {r["name"]: r["template"]["spec"]["template"]["spec"]
            for r in runtime["spec"]["template"]["spec"]["replicatedJobs"]}
    for target in runtime["spec"]["mlPolicy"]["torch"]["envInjection"]["targets"]:
        names = {c["name"] for c in (jobs[target["jobName"]].get("initContainers") or [])
                 + jobs[target["jobName"]]["containers"]}
        assert set(target["containerNames"]) <= names, target
    assert trainjob["spec"]["runtimeRef"]["name"] == runtime["metadata"]["name"]


def test_the_jobset_passes_jobsets_admission_rules() -> None:
    """kubernetes-sigs/jobset v0.12.0, pkg/webhooks/jobset_webhook.go: the coordinator is a pod
    of the JobSet and its endpoint a label value; every pod's hostname is a DNS label of at
    most 63 characters."""
    (jobset,) = podenv.load(MANIFESTS["jobset.yaml"])
    coordinator = jobset["spec"]["coordinator"]
    rjobs = {r["name"]: r for r in jobset["spec"]["replicatedJobs"]}
    rjob = rjobs[coordinator["replicatedJob"]]
    assert coordinator["jobIndex"] < rjob["replicas"]
    assert coordinator["podIndex"] < rjob["template"]["spec"]["parallelism"]
    label_value = __import__("re").compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
    for pod in podenv.pods([jobset]):
        assert DNS1035.match(pod.name) and len(pod.name) <= 63, pod.name
        endpoint = pod.labels["jobset.sigs.k8s.io/coordinator"]  # also a label: a label value
        assert label_value.match(endpoint) and len(endpoint) <= 63, endpoint
