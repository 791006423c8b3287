# serve behind nginx on a unix socket (run by hand; under systemd this is corral.service's ExecStart=)
/srv/app/.venv/bin/serve -w 4 -b unix:/run/corral/corral.sock --forwarded-allow-ips unix --keep-alive 75 --pid /run/corral/corral.pid myproject.asgi:application
