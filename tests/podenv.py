"""What each pod of a Kubernetes manifest runs, and in what environment (for the tests).

There is no Kubernetes here. ``pods(docs)`` turns a manifest of ``launch/kubernetes/`` into the
pods its operator would create, each with its containers' exact command lines and
environments, built the way the parts of Kubernetes that matter build them:

* the operator: the Kubeflow training operator (``kubeflow.org/v1`` PyTorchJob, v1.9) names
  the pods ``<job>-master-0``, ``<job>-worker-<i>`` (a headless Service each) and appends to
  every container, never to an init container, ``PYTHONUNBUFFERED``, ``MASTER_PORT``,
  ``PET_MASTER_PORT``, ``MASTER_ADDR``, ``PET_MASTER_ADDR``, ``WORLD_SIZE``, ``RANK``,
  ``PET_NODE_RANK``, ``PET_NPROC_PER_NODE`` (when ``nprocPerNode`` is set) and ``PET_NNODES``,
  with the master port read from the ``pytorch`` container's port named ``pytorchjob-port``
  (23456 without one); the Kubeflow trainer (``trainer.kubeflow.org/v1alpha1`` TrainJob, v2.3)
  builds a JobSet named after the TrainJob from its runtime, sets the ``node`` container's
  image, command and resources from ``spec.trainer``, and upserts ``PET_NNODES``,
  ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK`` (from the completion index annotation),
  ``PET_MASTER_ADDR`` (``<job>-node-0-0.<job>``) and ``PET_MASTER_PORT`` (29500) into it and
  into the runtime's ``envInjection`` targets; JobSet (``jobset.x-k8s.io/v1alpha2``, v0.12)
  names the pods ``<jobset>-<replicatedJob>-<job index>-<pod index>`` under the subdomain
  ``<jobset>`` and annotates them (``jobset.sigs.k8s.io/*``, the ``coordinator`` endpoint);
  its webhook makes a replicated job Indexed unless it says otherwise;
* the Job controller: an Indexed Job's pod carries the annotation
  ``batch.kubernetes.io/job-completion-index`` and every container and init container gets
  ``JOB_COMPLETION_INDEX`` from it;
* the kubelet: ``valueFrom.fieldRef`` (the downward API: name, namespace, labels,
  annotations, pod IP) is read from the pod, ``$(VAR)`` in env values (earlier variables only),
  ``command`` and ``args`` is expanded as the kubelet expands it (``$$`` escapes, unknown names
  stay), and the init containers run one after the other, each to success, before the
  containers start.

Left out: the training operator's own init container on PyTorchJob workers, which waits until
the master's Service name resolves (it only delays the worker: the preflight waits for its
join anyway).

``scaled(docs, nnodes, nproc_per_node)`` makes the edits docs/kubernetes.md tells a user to make
for another node count and GPU count, in the same fields. What the tests substitute, because
there is no cluster (tests/test_kubernetes_pods_cluster.py): the image is not pulled (the pod's
commands run with this checkout's ddpcheck and torch on PATH), the cluster DNS is each
namespace host's /etc/hosts with every pod's names, and a pod's ``torchrun`` (the training,
after the preflight) is a recorder on PATH that writes its arguments to a file: ddpcheck itself
starts torchrun as ``python -m ddpcheck.remote.torchrun``, never by that name.

Pure; used by tests/test_kubernetes_manifests.py and tests/test_kubernetes_pods_cluster.py.
"""

from __future__ import annotations

import copy
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import yaml

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "launch" / "kubernetes"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
PYTORCHJOB_DEFAULT_PORT = 23456  # the training operator's, without a pytorchjob-port
TRAINER_PORT = 29500  # the Kubeflow trainer's master port
SHELL_OPERATORS = ("||", "&&", ";", "|", "&")


@dataclass(frozen=True)
class ContainerRun:
    """One container as the kubelet starts it: its argv (expanded) and environment."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    init: bool


@dataclass(frozen=True)
class PodRun:
    """One pod: its name, node rank, the names other pods reach it by, and its containers."""

    name: str
    node_rank: int
    dns_names: tuple[str, ...]
    init_containers: tuple[ContainerRun, ...]
    containers: tuple[ContainerRun, ...]
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


def load(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of a manifest (anchors resolved, as kubectl reads them)."""
    return [doc for doc in yaml.safe_load_all(Path(path).read_text()) if doc]


def manifest_paths() -> list[Path]:
    return sorted(MANIFESTS.glob("*.yaml"))


def expand(text: str, env: Mapping[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion: ``$$`` is ``$``, ``$(NAME)`` the variable's value
    when it is defined (else left as it is), any other ``$`` kept."""
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2:end]
                    out.append(env[name] if name in env else text[i:end + 1])
                    i = end + 1
                    continue
        out.append(c)
        i += 1
    return "".join(out)


_FIELD = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")


def field_value(path: str, pod: Mapping[str, Any]) -> str:
    """A downward-API ``fieldRef.fieldPath`` read from ``pod`` (name, namespace, labels,
    annotations, podIP, nodeName)."""
    match = _FIELD.match(path)
    if match:
        kind, key = match.groups()
        values = pod[kind]
        if key not in values:
            raise KeyError(f"{path}: the pod {pod['name']} has no {kind[:-1]} {key!r}")
        return values[key]
    simple = {"metadata.name": "name", "metadata.namespace": "namespace",
              "status.podIP": "podIP", "spec.nodeName": "nodeName"}
    if path not in simple:
        raise ValueError(f"fieldRef {path!r}: not a field modelled here")
    return pod[simple[path]]


def resolve_env(env: Iterable[Mapping[str, Any]], pod: Mapping[str, Any]) -> dict[str, str]:
    """A container's ``env`` list as the kubelet resolves it, in order (a later entry of the same
    name wins; a value sees the variables above it)."""
    out: dict[str, str] = {}
    for entry in env:
        if "value" in entry:
            out[entry["name"]] = expand(str(entry["value"]), out)
        elif "valueFrom" in entry and "fieldRef" in entry["valueFrom"]:
            out[entry["name"]] = field_value(entry["valueFrom"]["fieldRef"]["fieldPath"], pod)
        elif "valueFrom" in entry:
            raise ValueError(f"env {entry['name']}: only value and fieldRef are modelled")
        else:
            out[entry["name"]] = ""
    return out


def _upsert(env: list[dict[str, Any]], entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    env = list(env)
    for entry in entries:
        names = [e["name"] for e in env]
        if entry["name"] in names:
            env[names.index(entry["name"])] = entry
        else:
            env.append(entry)
    return env


def _container_run(container: Mapping[str, Any], pod: Mapping[str, Any], init: bool,
                   extra_env: Iterable[dict[str, Any]] = ()) -> ContainerRun:
    env = resolve_env(list(container.get("env") or []) + list(extra_env), pod)
    words = list(container.get("command") or []) + list(container.get("args") or [])
    if not words:
        raise ValueError(f"container {container['name']}: no command (the image's entrypoint "
                         f"would run: name one)")
    return ContainerRun(container["name"], tuple(expand(str(w), env) for w in words), env, init)


def _completion_index_env() -> dict[str, Any]:
    return {"name": "JOB_COMPLETION_INDEX",
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}}}


# ---- PyTorchJob (kubeflow.org/v1) ---------------------------------------------------------

def _pytorchjob_pods(job: Mapping[str, Any]) -> list[PodRun]:
    name = job["metadata"]["name"]
    specs = job["spec"]["pytorchReplicaSpecs"]
    if "Master" not in specs:
        raise ValueError(f"PyTorchJob {name}: no Master replica (PET_MASTER_ADDR is its Service)")
    total = sum(int(spec.get("replicas", 1)) for spec in specs.values())
    nproc = job["spec"].get("nprocPerNode")
    master_template = specs["Master"]["template"]["spec"]["containers"]
    port = next((p["containerPort"] for c in master_template if c["name"] == "pytorch"
                 for p in c.get("ports") or [] if p.get("name") == "pytorchjob-port"),
                PYTORCHJOB_DEFAULT_PORT)
    master = f"{name}-master-0"
    nproc_int = int(nproc) if nproc and str(nproc).isdigit() else 1
    pods = []
    for rtype in ("Master", "Worker"):
        spec = specs.get(rtype)
        if spec is None:
            continue
        for index in range(int(spec.get("replicas", 1))):
            rank = index if rtype == "Master" else index + 1
            pod_name = f"{name}-{rtype.lower()}-{index}"
            pod = {"name": pod_name, "namespace": "default", "podIP": "", "nodeName": "",
                   "labels": {"training.kubeflow.org/job-name": name,
                              "training.kubeflow.org/replica-type": rtype.lower(),
                              "training.kubeflow.org/replica-index": str(index)},
                   "annotations": {}}
            operator_env = [{"name": "PYTHONUNBUFFERED", "value": "1"},
                            {"name": "MASTER_PORT", "value": str(port)},
                            {"name": "PET_MASTER_PORT", "value": str(port)},
                            {"name": "MASTER_ADDR", "value": master},
                            {"name": "PET_MASTER_ADDR", "value": master},
                            {"name": "WORLD_SIZE", "value": str(total * nproc_int)},
                            {"name": "RANK", "value": str(rank)},
                            {"name": "PET_NODE_RANK", "value": str(rank)}]
            if nproc is not None:
                operator_env.append({"name": "PET_NPROC_PER_NODE", "value": str(nproc)})
            operator_env.append({"name": "PET_NNODES", "value": str(total)})
            template = spec["template"]["spec"]
            inits = tuple(_container_run(c, pod, True) for c in template.get("initContainers") or [])
            mains = tuple(_container_run(c, pod, False, operator_env) for c in template["containers"])
            pods.append(PodRun(pod_name, rank, (pod_name,), inits, mains,
                               pod["labels"], pod["annotations"]))
    return sorted(pods, key=lambda p: p.node_rank)


# ---- JobSet (jobset.x-k8s.io/v1alpha2) ----------------------------------------------------

def _jobset_pods(jobset: Mapping[str, Any],
                 extra_env: Optional[Mapping[tuple[str, str], list[dict[str, Any]]]] = None,
                 ) -> list[PodRun]:
    """The pods of a JobSet; ``extra_env[(replicatedJob, container)]`` is upserted into that
    container's env (what the trainer injects)."""
    name = jobset["metadata"]["name"]
    spec = jobset["spec"]
    subdomain = (spec.get("network") or {}).get("subdomain") or name
    coordinator = spec.get("coordinator")
    pods = []
    global_index = 0
    for rjob in spec["replicatedJobs"]:
        job_spec = rjob["template"]["spec"]
        if job_spec.get("completionMode", "Indexed") != "Indexed":  # JobSet's default
            raise ValueError(f"JobSet {name}, replicatedJob {rjob['name']}: completionMode must "
                             f"be Indexed (JOB_COMPLETION_INDEX is the node rank)")
        completions = int(job_spec.get("completions", job_spec.get("parallelism", 1)))
        for job_index in range(int(rjob.get("replicas", 1))):
            for pod_index in range(completions):
                hostname = f"{name}-{rjob['name']}-{job_index}-{pod_index}"
                annotations = {"jobset.sigs.k8s.io/jobset-name": name,
                               "jobset.sigs.k8s.io/replicatedjob-name": rjob["name"],
                               "jobset.sigs.k8s.io/replicatedjob-replicas": str(rjob.get("replicas", 1)),
                               "jobset.sigs.k8s.io/job-index": str(job_index),
                               "jobset.sigs.k8s.io/job-global-index": str(global_index),
                               COMPLETION_INDEX: str(pod_index)}
                if coordinator:
                    annotations["jobset.sigs.k8s.io/coordinator"] = (
                        f"{name}-{coordinator['replicatedJob']}-{coordinator.get('jobIndex', 0)}-"
                        f"{coordinator.get('podIndex', 0)}.{subdomain}")
                labels = dict(annotations)
                labels.pop(COMPLETION_INDEX)
                pod = {"name": hostname, "namespace": "default", "podIP": "", "nodeName": "",
                       "labels": labels, "annotations": annotations}
                template = job_spec["template"]["spec"]

                def run(c: Mapping[str, Any], init: bool) -> ContainerRun:
                    extra = (extra_env or {}).get((rjob["name"], c["name"]), [])
                    c = dict(c, env=_upsert(list(c.get("env") or []), extra))
                    return _container_run(c, pod, init, [_completion_index_env()])

                inits = tuple(run(c, True) for c in template.get("initContainers") or [])
                mains = tuple(run(c, False) for c in template["containers"])
                pods.append(PodRun(hostname, pod_index, (f"{hostname}.{subdomain}",), inits,
                                   mains, labels, annotations))
            global_index += 1
    return pods


# ---- TrainJob (trainer.kubeflow.org/v1alpha1) on a ClusterTrainingRuntime -----------------

def _trainjob_pods(trainjob: Mapping[str, Any], runtime: Mapping[str, Any]) -> list[PodRun]:
    name = trainjob["metadata"]["name"]
    trainer = trainjob["spec"].get("trainer") or {}
    policy = runtime["spec"]["mlPolicy"]
    if "torch" not in policy:
        raise ValueError(f"runtime {runtime['metadata']['name']}: not a torch runtime")
    nnodes = int(trainer.get("numNodes", policy.get("numNodes", 1)))
    nproc = trainer.get("numProcPerNode", "auto")
    jobset_spec = copy.deepcopy(runtime["spec"]["template"]["spec"])
    node_jobs = [r for r in jobset_spec["replicatedJobs"]
                 if (r["template"].get("metadata") or {}).get("labels", {}).get(
                     "trainer.kubeflow.org/trainjob-ancestor-step") == "trainer"]
    if len(node_jobs) != 1:
        raise ValueError("the runtime needs one replicatedJob labelled "
                         "trainer.kubeflow.org/trainjob-ancestor-step: trainer")
    node_job = node_jobs[0]
    job_spec = node_job["template"]["spec"]
    job_spec["parallelism"] = job_spec["completions"] = nnodes
    containers = job_spec["template"]["spec"]["containers"]
    node = next(c for c in containers if c["name"] == "node")
    if "image" in trainer:
        node["image"] = trainer["image"]
    if "command" in trainer:
        node["command"] = trainer["command"]
        node.pop("args", None)
    if "args" in trainer:
        node["args"] = trainer["args"]
    if "resourcesPerNode" in trainer:
        node["resources"] = trainer["resourcesPerNode"]
    pet = [{"name": "PET_NNODES", "value": str(nnodes)},
           {"name": "PET_NPROC_PER_NODE", "value": str(nproc)},
           {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {
               "fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}}}]
    master = [{"name": "PET_MASTER_ADDR", "value": f"{name}-{node_job['name']}-0-0.{name}"},
              {"name": "PET_MASTER_PORT", "value": str(TRAINER_PORT)}]
    extra = {(node_job["name"], "node"): list(trainer.get("env") or []) + pet + master}
    for target in ((policy["torch"].get("envInjection") or {}).get("targets") or []):
        for container in target["containerNames"]:
            extra[(target["jobName"], container)] = pet + master
    jobset = {"metadata": {"name": name}, "spec": jobset_spec}
    return _jobset_pods(jobset, extra)


# ---- any manifest ---------------------------------------------------------------------------

def pods(docs: list[dict[str, Any]]) -> list[PodRun]:
    """The pods the manifest's workload runs, node rank order (see the module docstring)."""
    by_kind = {doc["kind"]: doc for doc in docs}
    if "PyTorchJob" in by_kind:
        found = _pytorchjob_pods(by_kind["PyTorchJob"])
    elif "TrainJob" in by_kind:
        ref = by_kind["TrainJob"]["spec"]["runtimeRef"]
        runtime = by_kind.get(ref.get("kind", "ClusterTrainingRuntime"))
        if runtime is None or runtime["metadata"]["name"] != ref["name"]:
            raise ValueError(f"the TrainJob's runtime {ref['name']} is not in the manifest")
        found = _trainjob_pods(by_kind["TrainJob"], runtime)
    elif "JobSet" in by_kind:
        found = _jobset_pods(by_kind["JobSet"])
    else:
        raise ValueError(f"no workload modelled here in {sorted(by_kind)}")
    return sorted(found, key=lambda p: p.node_rank)


def scaled(docs: list[dict[str, Any]], nnodes: int, nproc_per_node: int) -> list[dict[str, Any]]:
    """The manifest for ``nnodes`` nodes of ``nproc_per_node`` ranks, edited where
    docs/kubernetes.md says to edit it (node count, ranks per node and the GPUs requested)."""
    docs = copy.deepcopy(docs)
    for doc in docs:
        kind = doc["kind"]
        if kind == "PyTorchJob":
            doc["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] = nnodes - 1
            doc["spec"]["nprocPerNode"] = str(nproc_per_node)
        elif kind == "TrainJob":
            doc["spec"]["trainer"]["numNodes"] = nnodes
            doc["spec"]["trainer"]["numProcPerNode"] = nproc_per_node
        elif kind == "JobSet":
            for rjob in doc["spec"]["replicatedJobs"]:
                job = rjob["template"]["spec"]
                job["parallelism"] = job["completions"] = nnodes
                for c in _all_containers(job["template"]["spec"]):
                    for entry in c.get("env") or []:
                        if entry["name"] == "NNODES":
                            entry["value"] = str(nnodes)
                        elif entry["name"] == "NPROC_PER_NODE":
                            entry["value"] = str(nproc_per_node)
        for pod_spec in pod_specs(doc):
            for c in _all_containers(pod_spec):
                limits = (c.get("resources") or {}).get("limits") or {}
                if "nvidia.com/gpu" in limits:
                    limits["nvidia.com/gpu"] = nproc_per_node
        if kind == "TrainJob":
            limits = ((doc["spec"]["trainer"].get("resourcesPerNode") or {}).get("limits") or {})
            if "nvidia.com/gpu" in limits:
                limits["nvidia.com/gpu"] = nproc_per_node
    return docs


def with_deadlines(docs: list[dict[str, Any]], timeout_s: int,
                   join_timeout_s: int) -> list[dict[str, Any]]:
    """The manifest with the preflight's ``--timeout`` and ``--join-timeout`` set to these (the
    deadlines docs/kubernetes.md says to lower where the gang starts at once), in an argv or a
    shell line alike."""
    docs = copy.deepcopy(docs)
    values = {"--timeout": str(timeout_s), "--join-timeout": str(join_timeout_s)}
    for doc in docs:
        for spec in pod_specs(doc):
            for c in _all_containers(spec):
                for key in ("command", "args"):
                    words = c.get(key)
                    if not words:
                        continue
                    out = []
                    for i, word in enumerate(words):
                        if i and words[i - 1] in values:
                            word = values[words[i - 1]]
                        for flag, value in values.items():
                            word = re.sub(rf"({re.escape(flag)})\s+\d+", rf"\g<1> {value}", word)
                        out.append(word)
                    c[key] = out
    return docs


def _all_containers(pod_spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(pod_spec.get("initContainers") or []) + list(pod_spec.get("containers") or [])


def pod_specs(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The pod specs a manifest document holds (PyTorchJob replicas, a JobSet's or a runtime's
    replicated jobs)."""
    kind = doc["kind"]
    if kind == "PyTorchJob":
        return [r["template"]["spec"] for r in doc["spec"]["pytorchReplicaSpecs"].values()]
    if kind == "JobSet":
        return [r["template"]["spec"]["template"]["spec"] for r in doc["spec"]["replicatedJobs"]]
    if kind in ("ClusterTrainingRuntime", "TrainingRuntime"):
        return [r["template"]["spec"]["template"]["spec"]
                for r in doc["spec"]["template"]["spec"]["replicatedJobs"]]
    return []


def pod_templates(doc: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, PodTemplateSpec) for every pod template in a manifest document."""
    kind = doc["kind"]
    if kind == "PyTorchJob":
        return [(f"spec.pytorchReplicaSpecs.{k}.template", r["template"])
                for k, r in doc["spec"]["pytorchReplicaSpecs"].items()]
    if kind == "JobSet":
        return [(f"spec.replicatedJobs[{r['name']}].template.spec.template",
                 r["template"]["spec"]["template"]) for r in doc["spec"]["replicatedJobs"]]
    if kind in ("ClusterTrainingRuntime", "TrainingRuntime"):
        return [(f"spec.template.spec.replicatedJobs[{r['name']}].template.spec.template",
                 r["template"]["spec"]["template"])
                for r in doc["spec"]["template"]["spec"]["replicatedJobs"]]
    return []


def preflight_argv(container: ContainerRun) -> Optional[list[str]]:
    """The ``ddpcheck preflight`` command line a container runs, or None: the argv itself, or
    the first command of a ``bash -c``/``sh -c`` script line that starts with ``ddpcheck``."""
    argv = list(container.argv)
    if argv and Path(argv[0]).name == "ddpcheck":
        return argv
    if len(argv) >= 3 and Path(argv[0]).name in ("bash", "sh") and argv[1] == "-c":
        for line in argv[2].splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            words = list(lexer)
            if words and words[0] == "ddpcheck":
                command = []
                for word in words:
                    if word in SHELL_OPERATORS:
                        break
                    if "$" in word:
                        raise ValueError(f"{container.name}: {word!r}: a shell variable in the "
                                         f"ddpcheck line (name the value or use $(VAR))")
                    command.append(word)
                return command
    return None
