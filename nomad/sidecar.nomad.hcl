# sidecar.nomad.hcl: tandem as a sidecar task beside an unchanged app task.
#
# Both tasks share the group's network namespace (bridge mode), so 127.0.0.1:3000 is the app
# for tandem. tandem is a prestart sidecar: it starts first and binds the proxy, holding
# requests until the app answers /health; it tails the app task's alloc/logs files (Nomad's
# `<task>.stdout.N` rotation) and prints each line as one JSON record carrying the nomad.*
# attributes it reads from the NOMAD_* variables; it serves /readyz for Nomad's check.
#
#   nomad job run nomad/sidecar.nomad.hcl
#
# Stop order (Nomad's lifecycle docs): the group's shutdown_delay (the service is
# deregistered first), then the main task `app`, then sidecars: tandem stops last and reads
# the app's final lines before it exits. It cannot drain before the app stops (it does not
# own the app): the shutdown_delay is what lets in-flight requests finish. tandem's checkpoint
# in alloc/data means a restarted tandem task neither repeats nor skips lines.
job "legacy-app-sidecar" {
  datacenters = ["dc1"]
  type        = "service"

  group "web" {
    shutdown_delay = "5s"

    network {
      mode = "bridge"
      port "http" {
        to = 8080
      }
      port "admin" {
        to = 9901
      }
    }

    # The app's port inside the group's namespace (tandem's upstream).
    meta {
      app_port = "3000"
    }

    service {
      name     = "legacy-app"
      provider = "nomad"
      port     = "http"

      check {
        name     = "ready"
        type     = "http"
        port     = "admin"
        path     = "/readyz"
        interval = "5s"
        timeout  = "2s"
      }
    }

    task "app" {
      driver = "docker"
      leader = true

      config {
        image      = "tandem-legacy-app:dev"
        entrypoint = ["/legacy-app"]
        args       = ["--host", "127.0.0.1", "--port", "3000"]
      }

      kill_signal  = "SIGTERM"
      kill_timeout = "15s"

      # What tandem tails: alloc/logs/app.stdout.N and app.stderr.N.
      logs {
        max_files     = 10
        max_file_size = 10
      }
    }

    task "tandem" {
      driver = "docker"

      lifecycle {
        hook    = "prestart"
        sidecar = true
      }

      config {
        image = "tandem-legacy-app:dev"
        args  = ["--config", "/local/tandem.toml"]
      }

      kill_signal  = "SIGTERM"
      kill_timeout = "25s"

      template {
        destination = "local/tandem.toml"
        change_mode = "restart"
        data        = <<EOT
[service]
name = "app"

[admin]
listen = "0.0.0.0:{{ env "NOMAD_PORT_admin" }}"
# Reachable from the Nomad agent, so /metrics and /status need this bearer token (write it
# into secrets/ with a template from Nomad Variables); /healthz and /readyz stay open for checks.
token_file = "{{ env "NOMAD_SECRETS_DIR" }}/admin-token"

[health.readiness]
kind = "http"
target = "http://127.0.0.1:{{ env "NOMAD_META_app_port" }}/health"
interval = "1s"
timeout = "500ms"

[[proxy.listeners]]
name = "web"
listen = "0.0.0.0:{{ env "NOMAD_PORT_http" }}"
upstream = "127.0.0.1:{{ env "NOMAD_META_app_port" }}"
drain_timeout = "8s"

[logs]
exit_timeout = "2s"

[logs.tail]
paths = ["{{ env "NOMAD_ALLOC_DIR" }}/logs/app.stdout.*", "{{ env "NOMAD_ALLOC_DIR" }}/logs/app.stderr.*"]
checkpoint = "{{ env "NOMAD_ALLOC_DIR" }}/data/tandem-tail.json"
poll_interval = "250ms"
EOT
      }
    }
  }
}
