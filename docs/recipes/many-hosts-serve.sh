# on each host: 10.0.1.11, .12 and .13 (the balancer is 10.0.1.2)
/srv/app/.venv/bin/serve -w 4 -b 10.0.1.11:8000 --health-path /healthz --drain-delay 3 --keep-alive 75 --proxy-protocol --proxy-allow-from 10.0.1.2 --forwarded-allow-ips 10.0.1.2 myproject.asgi:application
