"""``thresher serve``: parse the flags, call ``tune.serve.run``, print the URL line."""

from __future__ import annotations

import click

from thresher.cli_common import project_option


@click.command("serve")
@project_option
@click.option(
    "--run", default=None, help="Run name, run folder, or 'production' [latest finished run]."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port (0 = any free one).")
@click.option(
    "--no-log-text", is_flag=True, help="Log only a hash of each text in DIR/serve/traffic."
)
@click.option(
    "--api-key-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="File holding the API key clients send as 'Authorization: Bearer KEY' (chmod 600); "
    "else env THRESHER_SERVE_API_KEY. Required off 127.0.0.1.",
)
@click.option(
    "--max-batch", default=32, show_default=True, type=int, help="Most texts per model call."
)
@click.option(
    "--max-wait-ms",
    default=5.0,
    show_default=True,
    type=float,
    help="How long a batch waits for more requests before it runs.",
)
@click.option(
    "--max-texts", default=256, show_default=True, type=int, help="Most texts per request."
)
@click.option(
    "--max-chars", default=20000, show_default=True, type=int, help="Most characters per text."
)
@click.option(
    "--device", type=click.Choice(["cpu", "cuda"]), default=None, help="[the GPU when there is one]"
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "bf16", "fp32"]),
    default="auto",
    show_default=True,
    help="auto: bf16 on a GPU or CPU with bf16 units, else fp32.",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: one process, uvicorn. ray: --replicas copies on Ray Serve (thresher[ray]).",
)
@click.option(
    "--replicas", default=1, show_default=True, type=int, help="Model copies (--engine ray)."
)
@click.option(
    "--replica-cpus", default=1.0, show_default=True, type=float, help="CPUs per replica (ray)."
)
@click.option(
    "--address",
    default=None,
    help="Ray cluster to serve on (--engine ray) [env RAY_ADDRESS, else a local Ray].",
)
def serve_command(
    project_dir,
    run,
    host,
    port,
    no_log_text,
    api_key_file,
    max_batch,
    max_wait_ms,
    max_texts,
    max_chars,
    device,
    precision,
    engine,
    replicas,
    replica_cpus,
    address,
):
    """Serve a tuned run over HTTP until Ctrl-C or SIGTERM (which finish the requests in flight).

    POST /v1/predict {"texts": [...]}; GET /healthz, /metrics. Every answered text is logged
    under DIR/serve/traffic for `thresher monitor` and `thresher round --from-traffic`.

    \b
    Example:
      thresher serve -p proj --run run-1 --port 8000
      curl -s localhost:8000/v1/predict -H 'content-type: application/json' \\
           -d '{"texts": ["a great film"]}'
      thresher serve -p proj --run run-1 --engine ray --replicas 2   # on Ray Serve
    """
    from thresher.project import Project
    from tune import serve

    options = serve.ServeOptions(
        run=run,
        host=host,
        port=port,
        log_text=not no_log_text,
        api_key_file=api_key_file,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_texts=max_texts,
        max_chars=max_chars,
        device=device,
        precision=precision,
    )

    def ready(name: str, url: str, endpoint: str) -> None:
        click.echo(f"serving {name} on {url} (POST {endpoint})")

    if engine != "ray" and (replicas != 1 or replica_cpus != 1.0 or address):
        raise click.UsageError("--replicas, --replica-cpus and --address need --engine ray")
    if engine == "ray":
        from tune import serve_ray

        scale = serve_ray.RayOptions(replicas=replicas, address=address, replica_cpus=replica_cpus)
        serve_ray.run(Project.at(project_dir), options, scale, on_ready=ready)
    else:
        serve.run(Project.at(project_dir), options, on_ready=ready)
