#
# ngx_collab: the two commands of the README and everything behind them.
#
#   make run     install what is missing, build, start PostgreSQL, Redis and
#                nginx under .run/, print the URL
#   make test    install, build, run the C unit tests, a short fuzz run
#                and prove -r t/
#
# The module is built against the distro nginx: a copy of nginx-dev's
# /usr/share/nginx/src is configured with the distro's own flags
# (conf_flags, which include --with-compat) plus --add-dynamic-module, and
# only "make modules" is run.  The distro /usr/sbin/nginx loads the result.
#

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.ONESHELL:
.DEFAULT_GOAL := build

# Every Debian package the project needs (build, run, test, fuzz, bench).
DEB_PACKAGES := nginx nginx-dev libpq-dev libjansson-dev libhiredis-dev \
    libcurl4-openssl-dev libssl-dev libpcre2-dev zlib1g-dev postgresql \
    redis-server libmojolicious-perl libdbd-pg-perl libcmocka-dev clang \
    libclang-rt-14-dev valgrind wrk docker-compose pkg-config make gcc \
    chromium

# The client (client/) and the browser tests need Node.js and npm: Debian's,
# unless a Node.js that brings its own npm is installed already (NodeSource's
# nodejs package includes npm and conflicts with Debian's npm package).
ifeq ($(shell command -v npm 2>/dev/null),)
DEB_PACKAGES += nodejs npm
endif

NGINX_SRC ?= /usr/share/nginx/src
NGINX ?= /usr/sbin/nginx

ifeq ($(SAN),1)
BUILD_DIR := build-san
SAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer
else
BUILD_DIR := build
SAN_FLAGS :=
endif

# The distro's flags (nginx -V) plus -Wall -Wextra.  -Werror is NOT put
# here: configure compiles its feature probes with --with-cc-opt, and
# -Werror makes some fail (pwrite, strerrordesc_np...), which would build
# the module against a different ngx_auto_config.h than the distro nginx.
# nginx's auto/cc/gcc adds "-W -Wall -Werror" to CFLAGS for the real
# compilation anyway; the configure rule below checks that it did.
CC_OPT := -g -O2 -fPIC -Wall -Wextra -Wno-unused-parameter \
    -fstack-protector-strong -Wformat -Werror=format-security -Wdate-time \
    -D_FORTIFY_SOURCE=2 $(SAN_FLAGS)
LD_OPT := -Wl,-z,relro -Wl,-z,now -fPIC $(SAN_FLAGS)

MODULE_SO := $(BUILD_DIR)/ngx_collab_module.so
MODULE_SRCS := $(wildcard config ngx_collab_module.c src/*.c src/*.h)

# make run: everything lives under .run/, loopback only
RUN_DIR := $(CURDIR)/.run
PORT ?= 8080
PG_PORT ?= 5433
REDIS_PORT ?= 6380
PG_DSN := host=127.0.0.1 port=$(PG_PORT) dbname=collab user=collab
# evaluated when used: on a fresh machine PostgreSQL arrives with `deps`
PG_BIN = $(lastword $(sort $(wildcard /usr/lib/postgresql/*/bin)))

ifeq ($(shell id -u),0)
SUDO :=
AS_PG := runuser -u postgres --
else
SUDO := sudo
AS_PG :=
endif

.PHONY: all deps build run start-pg start-redis start-nginx stop migrate \
    client test unit-test test-san test-valgrind fuzz bench clean distclean

all: build

# recipes are scripts: show what they say, not their text
.SILENT: deps run start-pg start-redis start-nginx stop migrate test client \
    unit-test test-san test-valgrind fuzz bench \
    $(BUILD_DIR)/nginx/configure $(BUILD_DIR)/nginx/objs/Makefile $(MODULE_SO)


# --- deps ------------------------------------------------------------------

deps:
	missing=
	for p in $(DEB_PACKAGES); do
	    s=$$(dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null || true)
	    [ "$$s" = "install ok installed" ] || missing="$$missing $$p"
	done
	if [ -z "$$missing" ]; then
	    echo "deps: all $(words $(DEB_PACKAGES)) Debian packages installed"
	    exit 0
	fi
	echo "deps: installing$$missing"
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update
	$(SUDO) env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y --no-install-recommends $$missing


# --- build -----------------------------------------------------------------

build: $(MODULE_SO)

# every step holds $(BUILD_DIR)/.lock: two makes sharing a tree (an editor's
# build and a test run) must not configure or link over each other
LOCK = mkdir -p $(BUILD_DIR) && exec 9>$(BUILD_DIR)/.lock && flock 9

$(BUILD_DIR)/nginx/configure:
	$(LOCK)
	echo "copying $(NGINX_SRC) to $(BUILD_DIR)/nginx"
	rm -rf $(BUILD_DIR)/nginx
	cp -a $(NGINX_SRC) $(BUILD_DIR)/nginx

# configure again whenever the module's config script (or this file) changes
$(BUILD_DIR)/nginx/objs/Makefile: $(BUILD_DIR)/nginx/configure config Makefile
	$(LOCK)
	echo "configuring $(BUILD_DIR)/nginx (log: $(BUILD_DIR)/nginx/configure.log)"
	cd $(BUILD_DIR)/nginx
	. ./conf_flags
	./configure "$${NGX_CONF_FLAGS[@]}" \
	    --with-cc-opt='$(CC_OPT)' --with-ld-opt='$(LD_OPT)' \
	    --add-dynamic-module=$(CURDIR) > configure.log 2>&1 \
	    || { tail -n 30 configure.log; exit 1; }
	grep -q '^CFLAGS *=.*-Werror' objs/Makefile \
	    || { echo "objs/Makefile: CFLAGS lack -Werror" >&2; exit 1; }
	touch objs/Makefile

# any source or header change recompiles the whole module (a few files):
# nginx's objs/Makefile only knows the dependencies config declares.
# The .so is replaced by a rename, never written in place: a running nginx
# has the old file mapped and would crash.
$(MODULE_SO): $(BUILD_DIR)/nginx/objs/Makefile $(MODULE_SRCS)
	$(LOCK)
	echo "building $@"
	find $(BUILD_DIR)/nginx/objs/addon -name "*.o" -delete
	$(MAKE) -C $(BUILD_DIR)/nginx -f objs/Makefile modules
	cp $(BUILD_DIR)/nginx/objs/ngx_collab_module.so $@.tmp
	mv -f $@.tmp $@
	echo "built $(CURDIR)/$@"


# --- run / stop / migrate --------------------------------------------------

run: deps build
	$(MAKE) --no-print-directory migrate
	$(MAKE) --no-print-directory start-redis start-nginx
	echo
	echo "ngx_collab is running: http://127.0.0.1:$(PORT)/"
	echo "(PostgreSQL 127.0.0.1:$(PG_PORT), Redis 127.0.0.1:$(REDIS_PORT);" \
	    "logs in .run/; make stop stops all three)"

start-pg:
	mkdir -p $(RUN_DIR)/pgsock
	if [ ! -s $(RUN_DIR)/pg/PG_VERSION ]; then
	    rm -rf $(RUN_DIR)/pg
	    mkdir -p $(RUN_DIR)/pg
	    [ -z "$(AS_PG)" ] || chown postgres: $(RUN_DIR)/pg $(RUN_DIR)/pgsock
	    chmod 700 $(RUN_DIR)/pg
	    $(AS_PG) $(PG_BIN)/initdb -D $(RUN_DIR)/pg -U postgres -A trust \
	        -E UTF8 --locale=C.UTF-8 >$(RUN_DIR)/initdb.log 2>&1 \
	        || { cat $(RUN_DIR)/initdb.log; exit 1; }
	fi
	[ -z "$(AS_PG)" ] || chown postgres: $(RUN_DIR)/pgsock
	if $(AS_PG) $(PG_BIN)/pg_ctl -D $(RUN_DIR)/pg status >/dev/null; then
	    echo "postgres: already running"
	else
	    $(AS_PG) $(PG_BIN)/pg_ctl -D $(RUN_DIR)/pg -w -l $(RUN_DIR)/pg/log \
	        -o "-c listen_addresses=127.0.0.1 -p $(PG_PORT)" \
	        -o "-k $(RUN_DIR)/pgsock" start >/dev/null
	    echo "postgres: started on 127.0.0.1:$(PG_PORT)"
	fi
	psql=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p $(PG_PORT) -U postgres)
	if [ -z "$$("$${psql[@]}" -d postgres -tAc \
	        "SELECT 1 FROM pg_roles WHERE rolname = 'collab'")" ]; then
	    "$${psql[@]}" -d postgres -c "CREATE ROLE collab LOGIN"
	fi
	if [ -z "$$("$${psql[@]}" -d postgres -tAc \
	        "SELECT 1 FROM pg_database WHERE datname = 'collab'")" ]; then
	    "$${psql[@]}" -d postgres -c "CREATE DATABASE collab OWNER collab"
	fi

migrate: start-pg
	if [ -x sql/migrate ]; then
	    sql/migrate "$(PG_DSN)"
	else
	    echo "migrate: sql/migrate does not exist yet, nothing to apply"
	fi

start-redis:
	mkdir -p $(RUN_DIR)/redis
	pid=$$(cat $(RUN_DIR)/redis/redis.pid 2>/dev/null || true)
	if [ -n "$$pid" ] && kill -0 "$$pid" 2>/dev/null; then
	    echo "redis: already running"
	    exit 0
	fi
	redis-server --port $(REDIS_PORT) --bind 127.0.0.1 \
	    --dir $(RUN_DIR)/redis --daemonize yes \
	    --pidfile $(RUN_DIR)/redis/redis.pid \
	    --logfile $(RUN_DIR)/redis/redis.log --save '' --appendonly no
	for i in $$(seq 50); do
	    [ -s $(RUN_DIR)/redis/redis.pid ] && break
	    sleep 0.1
	done
	echo "redis: started on 127.0.0.1:$(REDIS_PORT)"

# conf/collab.conf is a template: @@NAME@@ placeholders are filled here
start-nginx: $(MODULE_SO)
	mkdir -p $(RUN_DIR)/nginx/tmp
	sed -e 's|@@MODULE@@|$(CURDIR)/$(MODULE_SO)|g' \
	    -e 's|@@RUNDIR@@|$(RUN_DIR)/nginx|g' \
	    -e 's|@@LISTEN@@|127.0.0.1:$(PORT)|g' \
	    -e 's|@@WWW@@|$(CURDIR)/conf/www|g' \
	    -e 's|@@PG_DSN@@|$(PG_DSN)|g' \
	    -e 's|@@REDIS@@|127.0.0.1:$(REDIS_PORT)|g' \
	    conf/collab.conf > $(RUN_DIR)/nginx/nginx.conf
	ngx=($(NGINX) -p $(RUN_DIR)/nginx -c $(RUN_DIR)/nginx/nginx.conf)
	"$${ngx[@]}" -t -q
	# a reload keeps the module the master loaded: a rebuilt module needs
	# a restart (graceful quit, then start)
	sum=$$(md5sum < $(MODULE_SO))
	pid=$$(cat $(RUN_DIR)/nginx/nginx.pid 2>/dev/null || true)
	if [ -n "$$pid" ] && kill -0 "$$pid" 2>/dev/null; then
	    if [ "$$sum" = "$$(cat $(RUN_DIR)/nginx/module.sum 2>/dev/null)" ]
	    then
	        kill -HUP "$$pid"
	        echo "nginx: already running, reloaded"
	        exit 0
	    fi
	    kill -QUIT "$$pid"
	    for i in $$(seq 100); do kill -0 "$$pid" 2>/dev/null || break; sleep 0.1; done
	    echo "nginx: module rebuilt, restarting"
	fi
	"$${ngx[@]}"
	echo "$$sum" > $(RUN_DIR)/nginx/module.sum
	echo "nginx: started on 127.0.0.1:$(PORT)"

stop:
	pid=$$(cat $(RUN_DIR)/nginx/nginx.pid 2>/dev/null || true)
	if [ -n "$$pid" ] && kill -0 "$$pid" 2>/dev/null; then
	    kill -QUIT "$$pid"
	    for i in $$(seq 100); do kill -0 "$$pid" 2>/dev/null || break; sleep 0.1; done
	    echo "nginx: stopped"
	fi
	pid=$$(cat $(RUN_DIR)/redis/redis.pid 2>/dev/null || true)
	if [ -n "$$pid" ] && kill -0 "$$pid" 2>/dev/null; then
	    kill -TERM "$$pid"
	    for i in $$(seq 100); do kill -0 "$$pid" 2>/dev/null || break; sleep 0.1; done
	    echo "redis: stopped"
	fi
	if [ -s $(RUN_DIR)/pg/PG_VERSION ] \
	        && $(AS_PG) $(PG_BIN)/pg_ctl -D $(RUN_DIR)/pg status >/dev/null; then
	    $(AS_PG) $(PG_BIN)/pg_ctl -D $(RUN_DIR)/pg -w -m fast stop >/dev/null
	    echo "postgres: stopped"
	fi


# --- tests -----------------------------------------------------------------

# 1,000-connection tests need descriptors on the client side too
RAISE_NOFILE = ulimit -n "$$(ulimit -Hn)" 2>/dev/null || true

# C unit tests, a short fuzz run (t/fuzz's "run": seconds per target),
# then prove, whose summary ends the output; the exit status is non-zero
# when any of them failed
test: deps build
	$(RAISE_NOFILE)
	rc=0
	$(MAKE) --no-print-directory unit-test || rc=1
	$(MAKE) --no-print-directory fuzz || rc=1
	$(MAKE) --no-print-directory client || rc=1
	PERL5LIB=$(CURDIR)/t/lib prove -r t/ || rc=1
	exit $$rc

# the TypeScript client: npm ci (again only when package-lock.json changed),
# tsc, its unit tests (node:test); the demo page's conf/www/collab-client.js
# is the built dist/index.js (committed, so that make run needs no Node.js)
client: deps
	cd client
	if [ ! -f node_modules/.package-lock.json ] \
	        || [ package-lock.json -nt node_modules/.package-lock.json ]; then
	    npm ci --no-audit --no-fund
	fi
	npm run --silent build
	cmp -s dist/index.js ../conf/www/collab-client.js \
	    || { cp dist/index.js ../conf/www/collab-client.js;
	         echo "client: updated conf/www/collab-client.js"; }
	npm test --silent

unit-test:
	if [ -f t/unit/Makefile ]; then
	    $(MAKE) -C t/unit test
	else
	    echo "unit-test: t/unit/Makefile does not exist yet"
	fi

test-san: deps
	$(MAKE) --no-print-directory build SAN=1
	$(RAISE_NOFILE)
	rc=0
	if [ -f t/unit/Makefile ]; then $(MAKE) -C t/unit test SAN=1 || rc=1; fi
	TEST_NGINX_SAN=1 PERL5LIB=$(CURDIR)/t/lib prove -r t/ || rc=1
	exit $$rc

test-valgrind: deps build
	$(RAISE_NOFILE)
	TEST_NGINX_VALGRIND=1 PERL5LIB=$(CURDIR)/t/lib prove -r t/

fuzz:
	if [ -f t/fuzz/Makefile ]; then
	    $(MAKE) -C t/fuzz run
	else
	    echo "fuzz: t/fuzz/Makefile does not exist yet"
	fi

# bench/run starts every system it compares (ngx_collab, Nchan, Socket.IO,
# Node ws) on loopback and rewrites the generated block of
# docs/BENCHMARKS.md; about 8 minutes
bench: build
	if [ -x bench/run ]; then
	    WRITE=1 bench/run
	else
	    echo "bench: bench/run does not exist yet"
	fi

clean:
	rm -rf build build-san
	if [ -f t/unit/Makefile ]; then $(MAKE) -C t/unit clean || true; fi
	if [ -f t/fuzz/Makefile ]; then $(MAKE) -C t/fuzz clean || true; fi

# also forgets the make run data (PostgreSQL included): stops first
distclean: stop clean
	rm -rf .run
