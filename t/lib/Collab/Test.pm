package Collab::Test;

# The harness every t/*.t uses.
#
# One Collab::Test object per test file owns a temp dir and free loopback
# ports, and starts what the test asks for: PostgreSQL (initdb in the temp
# dir, run as "postgres" when we are root), Redis, and any number of nginx
# instances (the distro /usr/sbin/nginx loading build/ngx_collab_module.so)
# whose http{} block the test writes.
#
# Teardown always happens: at done_testing() every nginx is quit gracefully
# (so shutdown alerts and valgrind summaries reach the logs) and one more
# test checks that no error.log holds [alert]/[crit]/[emerg] or sanitizer
# lines; END blocks and SIGINT/SIGTERM handlers stop whatever still runs
# (nginx, Redis, PostgreSQL) by pid file and wait for it.  TEST_KEEP=1 keeps
# the temp dir.  Tests must end with done_testing() (no fixed plan), as the
# log check is one more test.
#
# Environment:
#   TEST_NGINX_SAN=1       load build-san/ngx_collab_module.so, start nginx
#                          with LD_PRELOAD=libasan.so, ASAN_OPTIONS
#   TEST_NGINX_VALGRIND=1  start nginx under valgrind (master and workers:
#                          --trace-children=yes), one log per process in
#                          the instance dir; any "ERROR SUMMARY: N>0" fails
#                          the log check.  Leak checking is off: nginx does
#                          not free its pools at exit.
#   TEST_NGINX_DEBUG=1     error_log at debug level instead of info
#   TEST_NGINX_BINARY      nginx binary (default /usr/sbin/nginx)
#   TEST_NGINX_MODULE      module .so to load instead of build*/
#   TEST_KEEP=1            keep the temp dir (its path is printed)

use strict;
use warnings;

use Carp qw(croak);
use Cwd qw(abs_path);
use Digest::SHA qw(sha1_base64);
use Errno qw(EAGAIN EINTR EWOULDBLOCK);
use File::Basename qw(dirname);
use File::Path qw(make_path remove_tree);
use File::Temp qw(tempdir);
use IO::Select;
use IO::Socket::INET;
use MIME::Base64 qw(encode_base64);
use POSIX qw(WNOHANG);
use Test::More;
use Test2::API qw(test2_add_callback_testing_done);
use Time::HiRes qw(sleep time);

our $VERSION = '0.1';

our $REPO = abs_path(dirname(__FILE__) . '/../../..');

my $WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
my $IS_ROOT = $> == 0;

my @LIVE;               # every Collab::Test object not yet torn down
my %PORTS_TAKEN;        # ports handed out in this process


# --- construction / teardown ------------------------------------------------

sub new {
    my ($class, %opts) = @_;

    my $dir = tempdir('collab-test-XXXXXX', TMPDIR => 1, CLEANUP => 0);
    chmod 0755, $dir;                   # postgres and nginx workers enter

    my $self = bless {
        dir     => $dir,
        opts    => \%opts,
        owner   => $$,
        ports   => {},
        nginx   => {},              # name => instance
        nginx_order => [],
        allow   => [],
        checked => 0,
    }, $class;

    push @LIVE, $self;

    diag("test dir: $dir") if $ENV{TEST_KEEP};

    return $self;
}

sub dir { $_[0]{dir} }
sub repo { $REPO }

# Lines matching one of these regexps are not reported by the log check
# (for tests that provoke an alert on purpose).
sub allow_log {
    my ($self, @re) = @_;
    push @{ $self->{allow} }, @re;
}

sub teardown {
    my ($self) = @_;

    return if $self->{torn_down} || $self->{owner} != $$;
    $self->{torn_down} = 1;

    local ($?, $!, $@);

    for my $name (@{ $self->{nginx_order} }) {
        eval { $self->stop_nginx(name => $name) };
    }
    eval { $self->stop_redis };
    eval { $self->stop_pg };

    if ($ENV{TEST_KEEP}) {
        diag("kept test dir: $self->{dir}");
    } else {
        remove_tree($self->{dir});
    }

    @LIVE = grep { $_ != $self } @LIVE;
}

sub _teardown_all {
    $_->teardown for reverse @LIVE;
}

# done_testing(): stop nginx gracefully, then the log check as one more test
test2_add_callback_testing_done(sub {
    for my $t (grep { $_->{owner} == $$ } @LIVE) {
        $t->check_logs;
    }
});

for my $sig (qw(INT TERM HUP)) {
    $SIG{$sig} = sub {
        _teardown_all();
        $SIG{$sig} = 'DEFAULT';
        kill $sig, $$;
        exit 1;
    };
}

END {
    local $?;
    for my $t (grep { $_->{owner} == $$ } @LIVE) {
        # a test that died before done_testing(): still show bad lines
        $t->_stop_all_nginx;
        if (!$t->{checked}) {
            my @bad = $t->_bad_log_lines;
            diag("error.log problems:\n" . join('', @bad)) if @bad;
        }
    }
    _teardown_all();
}


# --- ports --------------------------------------------------------------------

sub _free_port {
    for (1 .. 100) {
        my $s = IO::Socket::INET->new(
            LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'tcp',
            Listen => 1, ReuseAddr => 0,
        ) or next;
        my $port = $s->sockport;
        close $s;
        next if $PORTS_TAKEN{$port}++;
        return $port;
    }
    croak "no free port";
}

# port(N): the Nth port of this test (1 when omitted), allocated on first use
sub port {
    my ($self, $n) = @_;
    $n //= 1;
    return $self->{ports}{$n} //= _free_port();
}


# --- helpers ----------------------------------------------------------------

sub _run {
    my (@cmd) = @_;
    my $out = qx{@{[ join ' ', map { _sh_quote($_) } @cmd ]} 2>&1};
    return ($? == 0, $out);
}

sub _sh_quote {
    my ($s) = @_;
    return $s if $s =~ /^[\w.\/:=,+\-@%]+$/;
    $s =~ s/'/'\\''/g;
    return "'$s'";
}

sub _alive {
    my ($pid) = @_;
    return 0 unless $pid && kill 0, $pid;
    # a zombie whose parent does not reap it is dead to us
    if (open my $fh, '<', "/proc/$pid/stat") {
        my $stat = <$fh> // '';
        return 0 if $stat =~ /^\d+ \(.*\) Z /s;
    }
    waitpid($pid, WNOHANG);
    return 1;
}

# Collab::Test::alive($pid): the process exists and is not a zombie (a
# daemon's parent may reap it late)
sub alive { _alive($_[0]) }

sub _wait_gone {
    my ($pid, $timeout) = @_;
    my $end = time + $timeout;
    while (time < $end) {
        return 1 unless _alive($pid);
        sleep 0.05;
    }
    return !_alive($pid);
}

sub _kill_wait {
    my ($pid, $first_sig, $timeout) = @_;
    return unless _alive($pid);
    kill $first_sig, $pid;
    return if _wait_gone($pid, $timeout);
    kill 'TERM', $pid;
    return if _wait_gone($pid, 5);
    kill 'KILL', $pid;
    _wait_gone($pid, 5);
}

sub _read_file {
    my ($path) = @_;
    open my $fh, '<', $path or return undef;
    local $/;
    return scalar <$fh>;
}

sub _write_file {
    my ($path, $content) = @_;
    open my $fh, '>', $path or croak "$path: $!";
    print $fh $content;
    close $fh or croak "$path: $!";
}

sub _read_pid {
    my ($path) = @_;
    my $s = _read_file($path) // return undef;
    return $s =~ /^\s*(\d+)/ ? $1 : undef;
}

sub _wait_port {
    my ($port, $timeout, $alive) = @_;
    my $end = time + $timeout;
    while (time < $end) {
        my $s = IO::Socket::INET->new(
            PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp',
            Timeout => 1,
        );
        if ($s) {
            close $s;
            return 1;
        }
        return 0 if $alive && !$alive->();
        sleep 0.05;
    }
    return 0;
}

# run a command as the postgres user when we are root
sub _as_pg {
    my (@cmd) = @_;
    return $IS_ROOT ? ('runuser', '-u', 'postgres', '--', @cmd) : @cmd;
}


# --- PostgreSQL -------------------------------------------------------------

sub _pg_bin {
    my ($prog) = @_;
    my ($bindir) = sort { $b cmp $a } glob('/usr/lib/postgresql/*/bin');
    return "$bindir/$prog" if $bindir && -x "$bindir/$prog";
    return $prog;
}

sub start_pg {
    my ($self, %opts) = @_;

    croak "postgres already started" if $self->{pg};

    my $port = $self->{pg_port} = _free_port();
    my $data = "$self->{dir}/pg";
    my $run = "$self->{dir}/pg-run";

    make_path($data, $run);
    chmod 0700, $data;
    if ($IS_ROOT) {
        my ($uid, $gid) = (getpwnam('postgres'))[2, 3];
        defined $uid or croak "no postgres user (apt-get install postgresql)";
        chown $uid, $gid, $data, $run;
    }

    my ($ok, $out) = _run(_as_pg(_pg_bin('initdb'), '-D', $data,
        '-U', 'postgres', '-A', 'trust', '-E', 'UTF8', '--locale=C.UTF-8',
        '--no-sync'));
    $ok or croak "initdb failed:\n$out";

    $self->{pg} = { data => $data, run => $run };

    my $o = "-c listen_addresses=127.0.0.1 -p $port -k $run"
        . " -c fsync=off -c synchronous_commit=off -c full_page_writes=off";
    ($ok, $out) = _run(_as_pg(_pg_bin('pg_ctl'), '-D', $data, '-w',
        '-t', 60, '-l', "$run/postgres.log", '-o', $o, 'start'));
    if (!$ok) {
        my $log = _read_file("$run/postgres.log") // '';
        croak "pg_ctl start failed:\n$out\n$log";
    }

    for my $sql ("CREATE ROLE collab LOGIN SUPERUSER",
                 "CREATE DATABASE collab OWNER collab")
    {
        ($ok, $out) = _run('psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1',
            '-h', '127.0.0.1', '-p', $port, '-U', 'postgres',
            '-d', 'postgres', '-c', $sql);
        $ok or croak "psql \"$sql\" failed:\n$out";
    }

    if (-x "$REPO/sql/migrate" && !$opts{no_migrate}) {
        ($ok, $out) = _run("$REPO/sql/migrate", $self->pg_dsn);
        $ok or croak "sql/migrate failed:\n$out";
    }

    return $self;
}

sub pg_port { $_[0]{pg_port} }

sub pg_dsn {
    my ($self) = @_;
    croak "postgres not started" unless $self->{pg_port};
    return "host=127.0.0.1 port=$self->{pg_port} dbname=collab user=collab";
}

sub pg_dbh {
    my ($self, %attr) = @_;
    require DBI;
    croak "postgres not started" unless $self->{pg_port};
    return DBI->connect(
        "dbi:Pg:dbname=collab;host=127.0.0.1;port=$self->{pg_port}",
        'collab', '',
        { RaiseError => 1, PrintError => 0, AutoCommit => 1, %attr },
    );
}

sub stop_pg {
    my ($self) = @_;
    my $pg = delete $self->{pg} or return;

    _run(_as_pg(_pg_bin('pg_ctl'), '-D', $pg->{data}, '-w', '-t', 30,
        '-m', 'fast', 'stop'));

    # whatever pg_ctl could not stop
    my $pid = _read_pid("$pg->{data}/postmaster.pid");
    _kill_wait($pid, 'QUIT', 5) if $pid;
}


# --- Redis ------------------------------------------------------------------

sub start_redis {
    my ($self) = @_;

    croak "redis already started" if $self->{redis};

    my $port = $self->{redis_port} = _free_port();
    my $dir = "$self->{dir}/redis";
    make_path($dir);

    my ($ok, $out) = _run('redis-server', '--port', $port,
        '--bind', '127.0.0.1', '--dir', $dir, '--daemonize', 'yes',
        '--pidfile', "$dir/redis.pid", '--logfile', "$dir/redis.log",
        '--save', '', '--appendonly', 'no');
    $ok or croak "redis-server failed:\n$out";

    $self->{redis} = { dir => $dir };

    my $end = time + 30;
    while (time < $end) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
            PeerPort => $port, Proto => 'tcp', Timeout => 1);
        if ($s) {
            print $s "PING\r\n";
            my $line = <$s>;
            return $self if defined $line && $line eq "+PONG\r\n";
        }
        sleep 0.05;
    }

    croak "redis did not answer PING on port $port:\n"
        . (_read_file("$dir/redis.log") // '');
}

sub redis_port { $_[0]{redis_port} }

sub stop_redis {
    my ($self) = @_;
    my $r = delete $self->{redis} or return;
    my $pid = _read_pid("$r->{dir}/redis.pid");
    _kill_wait($pid, 'TERM', 10) if $pid;
}


# --- nginx ------------------------------------------------------------------

sub nginx_binary { $ENV{TEST_NGINX_BINARY} || '/usr/sbin/nginx' }

sub module_path {
    return $ENV{TEST_NGINX_MODULE} if $ENV{TEST_NGINX_MODULE};
    my $d = $ENV{TEST_NGINX_SAN} ? 'build-san' : 'build';
    return "$REPO/$d/ngx_collab_module.so";
}

sub _substitute {
    my ($self, $text) = @_;
    $text =~ s/%%PORT(\d*)%%/$self->port($1 eq '' ? 1 : $1)/ge;
    $text =~ s/%%PG_DSN%%/$self->pg_dsn/ge;
    $text =~ s/%%REDIS_PORT%%/$self->{redis_port}
                              or croak "redis not started"/ge;
    $text =~ s/%%TESTDIR%%/$self->{dir}/g;
    return $text;
}

# the full nginx.conf for an instance whose prefix dir is $idir
sub _nginx_conf {
    my ($self, $idir, $snippet, %opts) = @_;

    my $module = $opts{module} // module_path();
    my $workers = $opts{worker_processes} // 1;
    my $wc = $opts{worker_connections} // 4096;
    my $level = $ENV{TEST_NGINX_DEBUG} ? 'debug' : 'info';

    # enough descriptors for the connections, within the hard limit
    my $hard = `sh -c 'ulimit -Hn'`;
    chomp $hard;
    my $nofile = $wc * 2 + 64;
    $nofile = $hard if $hard =~ /^\d+$/ && $hard < $nofile;
    my $rlimit = "worker_rlimit_nofile $nofile;";
    # valgrind keeps descriptors for itself and lowers the hard limit
    $rlimit = '' if $ENV{TEST_NGINX_VALGRIND};

    my $main = $opts{main_conf} // '';
    my $events = $opts{events_conf} // '';
    my $http = $self->_substitute($snippet);

    return <<"EOF";
load_module $module;

daemon on;
master_process on;
worker_processes $workers;
$rlimit
error_log $idir/error.log $level;
pid $idir/nginx.pid;
lock_file $idir/nginx.lock;
$main

events {
    worker_connections $wc;
    $events
}

http {
    access_log off;
    client_body_temp_path $idir/tmp/body;
    proxy_temp_path $idir/tmp/proxy;
    fastcgi_temp_path $idir/tmp/fastcgi;
    uwsgi_temp_path $idir/tmp/uwsgi;
    scgi_temp_path $idir/tmp/scgi;

$http
}
EOF
}

sub _nginx_env {
    my ($idir) = @_;
    my %env;
    if ($ENV{TEST_NGINX_SAN}) {
        my $asan = `gcc -print-file-name=libasan.so`;
        chomp $asan;
        $env{LD_PRELOAD} = $asan;
        $env{ASAN_OPTIONS} = 'detect_leaks=0:abort_on_error=0'
            . ':halt_on_error=0';
        $env{UBSAN_OPTIONS} = 'print_stacktrace=1:halt_on_error=0';
    }
    return %env;
}

sub _nginx_wrapper {
    my ($idir) = @_;
    return () unless $ENV{TEST_NGINX_VALGRIND};
    return ('valgrind', '--tool=memcheck', '--trace-children=yes',
        '--error-exitcode=99', '--leak-check=no', '--num-callers=30',
        "--log-file=$idir/valgrind.%p.log");
}

sub _startup_timeout { $ENV{TEST_NGINX_VALGRIND} ? 120 : 20 }

# start_nginx($http_snippet, %opts): name, worker_processes,
# worker_connections, main_conf, events_conf, module, port (the port to
# wait for; default: the first "listen" of the snippet)
sub start_nginx {
    my ($self, $snippet, %opts) = @_;

    my $name = $opts{name} // 'main';
    croak "nginx '$name' already running"
        if $self->{nginx}{$name} && $self->{nginx}{$name}{running};

    my $idir = $name eq 'main'
        ? "$self->{dir}/nginx" : "$self->{dir}/nginx-$name";
    make_path("$idir/tmp");

    my $conf = $self->_nginx_conf($idir, $snippet, %opts);
    _write_file("$idir/nginx.conf", $conf);

    my $port = $opts{port};
    if (!defined $port) {
        ($port) = $conf =~ /^\s*listen\s+(?:[\d.]+:)?(\d+)/m;
    }

    my $inst = $self->{nginx}{$name} = {
        name => $name, dir => $idir, port => $port, opts => \%opts,
        snippet => $snippet, running => 1, workers_seen => {},
    };
    push @{ $self->{nginx_order} }, $name
        unless grep { $_ eq $name } @{ $self->{nginx_order} };

    my %env = _nginx_env($idir);
    my @cmd = (_nginx_wrapper($idir), nginx_binary(),
        '-p', "$idir/", '-c', "$idir/nginx.conf");

    my $rc;
    {
        local @ENV{keys %env} = values %env;
        $rc = system(join(' ', map { _sh_quote($_) } @cmd)
            . " >" . _sh_quote("$idir/stderr.log") . " 2>&1");
    }

    if ($rc != 0) {
        $inst->{running} = 0;
        croak "nginx '$name' failed to start:\n"
            . (_read_file("$idir/stderr.log") // '')
            . (_read_file("$idir/error.log") // '');
    }

    my $end = time + _startup_timeout();
    sleep 0.02 until $self->nginx_master_pid($name) || time > $end;
    my $pid = $self->nginx_master_pid($name)
        or croak "nginx '$name': no pid file\n"
            . (_read_file("$idir/error.log") // '');

    if (defined $port
        && !_wait_port($port, _startup_timeout(), sub { _alive($pid) }))
    {
        croak "nginx '$name' does not accept on port $port:\n"
            . (_read_file("$idir/error.log") // '');
    }

    # the master listens before its workers exist: wait for them too
    my $want = $opts{worker_processes} // 1;
    if ($want =~ /^\d+$/) {
        sleep 0.02 until (() = $self->nginx_worker_pids($name)) >= $want
                         || time > $end;
    }

    $self->_note_workers($name);

    return $self;
}

sub _inst {
    my ($self, $name) = @_;
    $name //= 'main';
    return $self->{nginx}{$name} // croak "no nginx instance '$name'";
}

sub nginx_dir { $_[0]->_inst($_[1])->{dir} }

sub nginx_master_pid {
    my ($self, $name) = @_;
    my $inst = $self->_inst($name);
    my $pid = _read_pid("$inst->{dir}/nginx.pid");
    return $pid && _alive($pid) ? $pid : undef;
}

# pids of the processes whose parent is the master (workers and, while a
# reload is in progress, old workers too)
sub nginx_worker_pids {
    my ($self, $name) = @_;
    my $master = $self->nginx_master_pid($name) or return ();
    my @pids;
    for my $stat (glob '/proc/[0-9]*/stat') {
        my $s = _read_file($stat) // next;
        my ($pid, $state, $ppid) = $s =~ /^(\d+) \(.*\) (\S) (\d+)/s
            or next;
        push @pids, $pid if $ppid == $master && $state ne 'Z';
    }
    @pids = sort { $a <=> $b } @pids;
    return @pids;
}

sub _note_workers {
    my ($self, $name) = @_;
    my $inst = $self->_inst($name);
    $inst->{workers_seen}{$_} = 1 for $self->nginx_worker_pids($name);
}

# reload_nginx(%opts): name; snippet (rewrite the config first); wait =>
# 1 (default) waits until the old workers are gone
sub reload_nginx {
    my ($self, %opts) = @_;
    my $name = $opts{name} // 'main';
    my $inst = $self->_inst($name);
    my $master = $self->nginx_master_pid($name)
        or croak "nginx '$name' is not running";

    if (defined $opts{snippet}) {
        $inst->{snippet} = $opts{snippet};
        _write_file("$inst->{dir}/nginx.conf",
            $self->_nginx_conf($inst->{dir}, $opts{snippet},
                               %{ $inst->{opts} }));
    }

    my @old = $self->nginx_worker_pids($name);
    kill 'HUP', $master;

    return $self unless $opts{wait} // 1;

    my $end = time + _startup_timeout() + 30;
    for my $pid (@old) {
        _wait_gone($pid, $end - time);
    }
    # new workers are up when a worker that is not an old one exists
    my %old = map { $_ => 1 } @old;
    my $want = $inst->{opts}{worker_processes} // 1;
    $want = 1 unless $want =~ /^\d+$/;
    sleep 0.02 until grep({ !$old{$_} } $self->nginx_worker_pids($name))
                         >= $want
                     || time > $end;
    $self->_note_workers($name);
    return $self;
}

# stop_nginx(%opts): name; graceful (QUIT) unless fast => 1 (TERM)
sub stop_nginx {
    my ($self, %opts) = @_;
    my $name = $opts{name} // 'main';
    my $inst = $self->{nginx}{$name} or return;
    return unless $inst->{running};
    $inst->{running} = 0;

    my $master = $self->nginx_master_pid($name);
    my @workers = $self->nginx_worker_pids($name);
    $self->_note_workers($name) if $master;

    if ($master) {
        _kill_wait($master, $opts{fast} ? 'TERM' : 'QUIT',
                   $ENV{TEST_NGINX_VALGRIND} ? 120 : 30);
    }
    # workers of a master that had to be killed
    for my $pid (@workers, keys %{ $inst->{workers_seen} }) {
        _kill_wait($pid, 'TERM', 5) if _alive($pid);
    }
}

sub _stop_all_nginx {
    my ($self) = @_;
    for my $name (@{ $self->{nginx_order} }) {
        eval { $self->stop_nginx(name => $name) };
    }
}

sub error_log {
    my ($self, $name) = @_;
    return _read_file($self->_inst($name)->{dir} . '/error.log') // '';
}

# nginx -t on a config built like start_nginx's: returns (ok, output)
sub nginx_test_conf {
    my ($self, $snippet, %opts) = @_;
    my $idir = "$self->{dir}/conftest-" . ++$self->{conftests};
    make_path("$idir/tmp");
    _write_file("$idir/nginx.conf",
        $self->_nginx_conf($idir, $snippet, %opts));
    my %env = _nginx_env($idir);
    local @ENV{keys %env} = values %env;
    return _run(nginx_binary(), '-t', '-p', "$idir/",
        '-c', "$idir/nginx.conf");
}

sub _bad_log_lines {
    my ($self) = @_;
    my @bad;
    for my $name (@{ $self->{nginx_order} }) {
        my $dir = $self->{nginx}{$name}{dir};
        for my $file ("$dir/error.log", "$dir/stderr.log") {
            open my $fh, '<', $file or next;
            while (my $line = <$fh>) {
                next unless $line =~ /\[(?:alert|crit|emerg)\]
                                      |AddressSanitizer|LeakSanitizer
                                      |runtime\ error:/x;
                next if grep { $line =~ $_ } @{ $self->{allow} };
                push @bad, "$name: $line";
            }
        }
        for my $file (glob "$dir/valgrind.*.log") {
            my $log = _read_file($file) // next;
            # the summary, or error lines of a process that did not exit
            if ($log =~ /ERROR SUMMARY: [1-9]/
                || $log =~ /^==\d+== (?:Invalid (?:read|write|free)
                                      |Conditional\ jump
                                      |Use\ of\ uninitialised
                                      |Syscall\ param
                                      |Mismatched\ free
                                      |Source\ and\ destination)/mx)
            {
                push @bad, "$name: $file: valgrind errors\n$log";
            }
        }
    }
    return @bad;
}

# the test done_testing() adds: stops every nginx first (graceful quit)
sub check_logs {
    my ($self) = @_;
    return if $self->{checked}++;
    $self->_stop_all_nginx;
    my @bad = $self->_bad_log_lines;
    ok(!@bad, 'no alert, crit, emerg or sanitizer line in error logs')
        or diag(join '', @bad);
}


# --- URLs and Mojo ----------------------------------------------------------

sub url {
    my ($self, $path, $port) = @_;
    return 'http://127.0.0.1:' . ($port // $self->port) . ($path // '/');
}

sub ws_url {
    my ($self, $path, $port) = @_;
    return 'ws://127.0.0.1:' . ($port // $self->port) . ($path // '/');
}

# a Test::Mojo whose requests go to absolute URLs ($t->url, $t->ws_url)
sub test_mojo {
    my ($self) = @_;
    require Test::Mojo;
    my $tm = Test::Mojo->new;
    $tm->ua->inactivity_timeout(10)->request_timeout(20);
    return $tm;
}


# --- raw HTTP and WebSocket -------------------------------------------------

sub _connect {
    my ($self, $port) = @_;
    my $s = IO::Socket::INET->new(
        PeerAddr => '127.0.0.1', PeerPort => $port // $self->port,
        Proto => 'tcp', Timeout => 5,
    ) or croak "connect to port " . ($port // $self->port) . ": $!";
    binmode $s;
    $s->autoflush(1);
    ${*$s}{collab_buf} = '';
    return $s;
}

# read more bytes into the socket's buffer; false on EOF or timeout
sub _fill {
    my ($s, $deadline) = @_;
    my $sel = IO::Select->new($s);
    while (1) {
        my $left = $deadline - time;
        return 0 if $left <= 0;
        next unless $sel->can_read($left);
        my $n = sysread($s, my $chunk, 65536);
        if (!defined $n) {
            next if $! == EINTR || $! == EAGAIN || $! == EWOULDBLOCK;
            return 0;
        }
        return 0 if $n == 0;
        ${*$s}{collab_buf} .= $chunk;
        return 1;
    }
}

sub _take {
    my ($s, $n, $deadline) = @_;
    while (length(${*$s}{collab_buf}) < $n) {
        _fill($s, $deadline) or return undef;
    }
    return substr(${*$s}{collab_buf}, 0, $n, '');
}

# ($status, \%headers, $head_text) of the response head, or () on EOF
sub _read_head {
    my ($s, $deadline) = @_;
    while (${*$s}{collab_buf} !~ /\r\n\r\n/) {
        _fill($s, $deadline) or return ();
    }
    ${*$s}{collab_buf} =~ s/^(.*?\r\n)\r\n//s;
    my $head = $1;
    my ($status) = $head =~ m{^HTTP/\d\.\d (\d{3})};
    my %h;
    for my $line (split /\r\n/, $head) {
        next unless $line =~ /^([^:\s]+):\s*(.*?)\s*$/;
        my $k = lc $1;
        $h{$k} = exists $h{$k} ? "$h{$k}, $2" : $2;
    }
    return ($status, \%h, $head);
}

# http_raw($request_text, port => ..., timeout => ...): sends the bytes as
# they are, returns ($status, \%headers (lower-case names), $body).
# The body is read by Content-Length, chunked, or until EOF.
sub http_raw {
    my ($self, $request, %opts) = @_;
    my $s = $self->_connect($opts{port});
    my $deadline = time + ($opts{timeout} // 10);

    local $SIG{PIPE} = 'IGNORE';
    print $s $request;

    my ($status, $h) = _read_head($s, $deadline);
    return (undef, {}, undef) unless defined $status;

    my $body = '';
    if (defined $h->{'content-length'}) {
        $body = _take($s, $h->{'content-length'}, $deadline) // '';
    } elsif (($h->{'transfer-encoding'} // '') =~ /chunked/i) {
        while (1) {
            while (${*$s}{collab_buf} !~ /\r\n/) {
                _fill($s, $deadline) or last;
            }
            ${*$s}{collab_buf} =~ s/^([0-9a-fA-F]+)[^\r]*\r\n// or last;
            my $len = hex $1;
            last if $len == 0;
            $body .= _take($s, $len, $deadline) // last;
            _take($s, 2, $deadline);
        }
    } elsif ($status !~ /^(?:1|204|304)/) {
        1 while _fill($s, $deadline);
        $body = ${*$s}{collab_buf};
    }
    close $s;

    return ($status, $h, $body);
}

# ws_raw($path, %headers): the HTTP/1.1 upgrade on a plain socket.
# Headers override the defaults (Host, Upgrade, Connection,
# Sec-WebSocket-Key, Sec-WebSocket-Version); an undef value drops one.
# Keys starting with "-" are options: -port, -timeout.
# Dies unless the answer is 101 with the right Sec-WebSocket-Accept.
# Returns the socket (list context: socket, status, \%headers).
sub ws_raw {
    my ($self, $path, %args) = @_;

    my %opt;
    for my $k (grep { /^-/ } keys %args) {
        $opt{substr $k, 1} = delete $args{$k};
    }

    my $port = $opt{port} // $self->port;
    my $key = encode_base64(join('', map { chr int rand 256 } 1 .. 16), '');

    my @hdr = (
        [Host => "127.0.0.1:$port"],
        [Upgrade => 'websocket'],
        [Connection => 'Upgrade'],
        ['Sec-WebSocket-Key' => $key],
        ['Sec-WebSocket-Version' => 13],
    );
    my %lc = map { lc($_) => $_ } keys %args;
    for my $h (@hdr) {
        my $k = $lc{ lc $h->[0] } // next;
        $h->[1] = delete $args{$k};
    }
    push @hdr, map { [$_ => $args{$_}] } sort keys %args;

    my $req = "GET $path HTTP/1.1\r\n"
        . join('', map { "$_->[0]: $_->[1]\r\n" } grep { defined $_->[1] }
                   @hdr)
        . "\r\n";

    my $s = $self->_connect($port);
    local $SIG{PIPE} = 'IGNORE';
    print $s $req;

    my ($status, $h) = _read_head($s, time + ($opt{timeout} // 10));
    croak "ws_raw $path: no response" unless defined $status;
    croak "ws_raw $path: status $status, not 101" unless $status == 101;

    my $sent_key = (grep { lc $_->[0] eq 'sec-websocket-key' } @hdr)[0][1];
    if (defined $sent_key) {
        my $want = sha1_base64($sent_key . $WS_GUID) . '=';
        my $got = $h->{'sec-websocket-accept'} // '';
        croak "ws_raw $path: Sec-WebSocket-Accept '$got', want '$want'"
            unless $got eq $want;
    }

    return wantarray ? ($s, $status, $h) : $s;
}

# ws_frame(%args): one client frame as bytes.
#   opcode (default 1), payload (''), fin (1), mask (1), mask_key (4 bytes,
#   random by default), rsv (0..7, or rsv1/rsv2/rsv3 => 1),
#   length (the length written in the header, to lie), length_form
#   (7, 16 or 64: force that encoding of the length)
sub ws_frame {
    my (%a) = @_;

    my $payload = $a{payload} // '';
    my $opcode = $a{opcode} // 1;
    my $fin = $a{fin} // 1;
    my $mask = $a{mask} // 1;
    my $rsv = $a{rsv} // 0;
    $rsv |= 4 if $a{rsv1};
    $rsv |= 2 if $a{rsv2};
    $rsv |= 1 if $a{rsv3};
    my $len = $a{length} // length $payload;

    my $form = $a{length_form}
        // ($len < 126 ? 7 : $len < 65536 ? 16 : 64);

    my $f = chr(($fin ? 0x80 : 0) | (($rsv & 7) << 4) | ($opcode & 0x0f));
    my $m = $mask ? 0x80 : 0;

    if ($form == 7) {
        $f .= chr($m | $len);
    } elsif ($form == 16) {
        $f .= chr($m | 126) . pack('n', $len);
    } else {
        $f .= chr($m | 127) . pack('Q>', $len);
    }

    if ($mask) {
        my $key = $a{mask_key} // pack('N', int rand 2**32);
        my $masked = $payload ^ substr($key x (int(length($payload) / 4) + 1),
                                       0, length $payload);
        $f .= $key . $masked;
    } else {
        $f .= $payload;
    }

    return $f;
}

# ws_send($sock, %frame_args): writes ws_frame(%frame_args)
sub ws_send {
    my ($self, $s, %a) = @_;
    my $bytes = ws_frame(%a);
    local $SIG{PIPE} = 'IGNORE';
    my $off = 0;
    while ($off < length $bytes) {
        my $n = syswrite($s, $bytes, length($bytes) - $off, $off);
        return 0 unless defined $n;
        $off += $n;
    }
    return 1;
}

# ws_read_frame($sock, $timeout): the next frame from the server as
# {opcode, fin, rsv, masked, payload, close_code, close_reason}, or undef on
# EOF/timeout ($t->{ws_error} says which: 'eof' or 'timeout')
sub ws_read_frame {
    my ($self, $s, $timeout) = @_;
    my $deadline = time + ($timeout // 10);

    my $get = sub {
        my $b = _take($s, $_[0], $deadline);
        if (!defined $b) {
            $self->{ws_error} = time >= $deadline ? 'timeout' : 'eof';
        }
        return $b;
    };

    my $hdr = $get->(2) // return undef;
    my ($b0, $b1) = unpack 'CC', $hdr;
    my $len = $b1 & 0x7f;
    if ($len == 126) {
        $len = unpack 'n', ($get->(2) // return undef);
    } elsif ($len == 127) {
        $len = unpack 'Q>', ($get->(8) // return undef);
    }
    my $key;
    if ($b1 & 0x80) {
        $key = $get->(4) // return undef;
    }
    my $payload = $len ? ($get->($len) // return undef) : '';
    if (defined $key) {
        $payload ^= substr($key x (int($len / 4) + 1), 0, $len);
    }

    my %f = (
        opcode => $b0 & 0x0f,
        fin => ($b0 & 0x80) ? 1 : 0,
        rsv => ($b0 >> 4) & 7,
        masked => defined $key ? 1 : 0,
        payload => $payload,
    );
    if ($f{opcode} == 8 && length $payload >= 2) {
        $f{close_code} = unpack 'n', $payload;
        $f{close_reason} = substr $payload, 2;
    }
    delete $self->{ws_error};
    return \%f;
}

# ws_wait_eof($sock, $timeout): true when the server closes the TCP
# connection in time (data that arrives meanwhile is discarded)
sub ws_wait_eof {
    my ($self, $s, $timeout) = @_;
    my $deadline = time + ($timeout // 10);
    while (1) {
        ${*$s}{collab_buf} = '';
        next if _fill($s, $deadline);
        return time < $deadline ? 1 : 0;
    }
}

1;
