# wrapper.nomad.hcl: tandem wraps the app (raw_exec; the `exec` driver works the same way).
#
# The task's command is tandem; tandem runs the app as its child, proxies the `http` port to
# the app's loopback port, serves /readyz on the `admin` port for Nomad's check, restarts the
# app with backoff, and on Nomad's kill_signal drains, stops the app and exits with its code.
#
#   nomad job run nomad/wrapper.nomad.hcl
#
# Installed on each client: /usr/local/bin/tandem and /usr/local/bin/legacy-app.
#
# Timing invariant (tests/nomad/test_jobspecs.py checks it): Nomad first deregisters the
# service and waits `shutdown_delay`, then sends kill_signal and SIGKILLs after kill_timeout.
# tandem's own sequence after SIGTERM, shutdown.delay + drain_timeout + app.stop_timeout +
# 2 x logs.exit_timeout (0 + 8 + 10 + 4 = 22s), must end before kill_timeout (25s), which
# must not exceed the client's max_kill_timeout (default 30s) or Nomad silently caps it.
job "legacy-app" {
  datacenters = ["dc1"]
  type        = "service"

  group "web" {
    count = 1

    network {
      port "http" {}
      port "admin" {}
      port "app" {}
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

    task "legacy-app" {
      driver = "raw_exec"

      config {
        command = "/usr/local/bin/tandem"
        args    = ["--config", "local/tandem.toml"]
      }

      # SIGINT (Nomad's default) would work too: tandem treats TERM, INT and QUIT alike.
      kill_signal    = "SIGTERM"
      kill_timeout   = "25s"
      shutdown_delay = "5s"

      logs {
        max_files     = 10
        max_file_size = 10
      }

      resources {
        cpu    = 200
        memory = 128
      }

      template {
        destination = "local/tandem.toml"
        change_mode = "restart"
        data        = <<EOT
[service]
name = "legacy-app"

[app]
command = ["/usr/local/bin/legacy-app", "--host", "127.0.0.1", "--port", "{{ env "NOMAD_PORT_app" }}"]
stop_signal = "SIGTERM"
stop_timeout = "10s"

[restart]
policy = "on-failure"
max_delay = "10s"

[admin]
listen = "{{ env "NOMAD_ADDR_admin" }}"
# Reachable from the Nomad agent, so /metrics and /status need this bearer token (write it
# into secrets/ with a template from Nomad Variables); /healthz and /readyz stay open for checks.
token_file = "{{ env "NOMAD_SECRETS_DIR" }}/admin-token"

[health.readiness]
kind = "http"
target = "http://127.0.0.1:{{ env "NOMAD_PORT_app" }}/health"
interval = "1s"
timeout = "500ms"

[health.liveness]
kind = "http"
target = "http://127.0.0.1:{{ env "NOMAD_PORT_app" }}/health"
interval = "5s"
timeout = "2s"
failure_threshold = 3
initial_delay = "5s"

[[proxy.listeners]]
name = "web"
listen = "{{ env "NOMAD_ADDR_http" }}"
upstream = "127.0.0.1:{{ env "NOMAD_PORT_app" }}"
drain_timeout = "8s"

[logs]
exit_timeout = "2s"
EOT
      }
    }
  }
}
