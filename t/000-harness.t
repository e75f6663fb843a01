# The test harness itself (t/lib/Collab/Test.pm): everything later tests
# stand on.  Starts PostgreSQL, Redis and nginx (with the module loaded but
# only a static location), and checks each is really reachable: DBI talks
# to PostgreSQL, Redis answers PING over a plain socket, nginx serves a
# file through the raw HTTP helper and through Test::Mojo, a reload brings
# up new workers, and a second named nginx instance runs beside the first.
# The WebSocket helpers are exercised against collab_echo when the module
# already has that directive.

use strict;
use warnings;

use Test::More;
use IO::Socket::INET;
use Collab::Test;

my $t = Collab::Test->new;

# --- PostgreSQL -------------------------------------------------------------

$t->start_pg;
like($t->pg_dsn, qr/^host=127\.0\.0\.1 port=\d+ dbname=collab user=collab$/,
     'pg_dsn is a libpq conninfo string');

my $dbh = $t->pg_dbh;
is($dbh->selectrow_array('SELECT current_database()'), 'collab',
   'DBI reaches the collab database');
is($dbh->selectrow_array('SELECT current_user'), 'collab',
   'connected as the collab role');
$dbh->do('CREATE TABLE harness_probe (v int)');
$dbh->do('INSERT INTO harness_probe VALUES (42)');
is($dbh->selectrow_array('SELECT v FROM harness_probe'), 42,
   'the collab role can create and write tables');
$dbh->disconnect;

# --- Redis ------------------------------------------------------------------

$t->start_redis;
my $r = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                              PeerPort => $t->redis_port, Proto => 'tcp')
    or die "redis connect: $!";
print $r "PING\r\n";
is(scalar <$r>, "+PONG\r\n", 'redis answers PING');
close $r;

# --- nginx ------------------------------------------------------------------

mkdir $t->dir . '/www';
open my $fh, '>', $t->dir . '/www/hello.txt' or die $!;
print $fh "hello from the harness\n";
close $fh;
chmod 0644, $t->dir . '/www/hello.txt';

my $http = <<'EOF';
    server {
        listen 127.0.0.1:%%PORT%%;
        root %%TESTDIR%%/www;
        location / { }
    }
EOF

$t->start_nginx($http);

ok($t->nginx_master_pid, 'nginx master pid from the pid file');
is(scalar(my @w = $t->nginx_worker_pids), 1, 'one worker by default');

my ($status, $h, $body) = $t->http_raw(
    "GET /hello.txt HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
is($status, 200, 'http_raw: static file status');
is($body, "hello from the harness\n", 'http_raw: static file body');
is($h->{'content-length'}, 23, 'http_raw: headers by lower-case name');

($status) = $t->http_raw("GET /missing HTTP/1.1\r\nHost: x\r\n\r\n");
is($status, 404, 'http_raw: 404 for a missing file');

my $tm = $t->test_mojo;
$tm->get_ok($t->url('/hello.txt'))->status_is(200)
   ->content_is("hello from the harness\n");

my @old = $t->nginx_worker_pids;
$t->reload_nginx;
my @new = $t->nginx_worker_pids;
is(scalar @new, 1, 'one worker after reload');
isnt($new[0], $old[0], 'reload replaced the worker');
ok(!Collab::Test::alive($old[0]), 'the old worker is gone');
($status) = $t->http_raw("GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n");
is($status, 200, 'serves after reload');

# a second instance beside the first, with its own port, dir and log
$t->start_nginx(<<'EOF', name => 'b', worker_processes => 2);
    server {
        listen 127.0.0.1:%%PORT2%%;
        location = /b { return 200 "instance b\n"; }
    }
EOF
isnt($t->port(2), $t->port(1), 'port(2) differs from port(1)');
is(scalar(my @wb = $t->nginx_worker_pids('b')), 2, 'b has two workers');
($status, $h, $body) = $t->http_raw("GET /b HTTP/1.1\r\nHost: x\r\n\r\n",
                                    port => $t->port(2));
is($body, "instance b\n", 'second instance answers on its port');
my $pid_b = $t->nginx_master_pid('b');
$t->stop_nginx(name => 'b');
ok(!Collab::Test::alive($pid_b), 'stop_nginx waits for the master to exit');
like($t->error_log('b'), qr/\[notice\].*exiting/, 'error_log of b');

# --- frames -----------------------------------------------------------------

is(Collab::Test::ws_frame(opcode => 1, payload => 'hi', mask => 0),
   "\x81\x02hi", 'ws_frame: unmasked text frame');
my $f = Collab::Test::ws_frame(opcode => 2, payload => 'abcd',
                               mask_key => "\x01\x02\x03\x04", fin => 0);
is($f, "\x02\x84\x01\x02\x03\x04" . ("abcd" ^ "\x01\x02\x03\x04"),
   'ws_frame: masked, not final');
is(substr(Collab::Test::ws_frame(payload => 'x' x 200, mask => 0), 0, 4),
   "\x81\x7e\x00\xc8", 'ws_frame: 16-bit length');
is(substr(Collab::Test::ws_frame(payload => 'x', mask => 0, length => 70000,
                                 rsv1 => 1), 0, 10),
   "\xc1\x7f" . pack('Q>', 70000), 'ws_frame: rsv1, lying 64-bit length');

# --- WebSocket, when the module has collab_echo -----------------------------

my $echo = <<'EOF';
    server {
        listen 127.0.0.1:%%PORT3%%;
        location = /collab/echo { collab_echo; }
    }
EOF

SKIP: {
    my ($ok, $out) = $t->nginx_test_conf($echo);
    my ($why) = $out =~ /(unknown directive \S+|\[emerg\][^\n]*)/;
    skip "the module has no collab_echo yet ($why)", 9 unless $ok;

    $t->start_nginx($echo, name => 'echo');

    # raw socket: upgrade, a masked text frame, its echo
    my $s = $t->ws_raw('/collab/echo', -port => $t->port(3));
    $t->ws_send($s, opcode => 1, payload => 'raw hello');
    my $fr = $t->ws_read_frame($s, 10);
    is($fr && $fr->{opcode}, 1, 'raw: echo is a text frame');
    is($fr && $fr->{payload}, 'raw hello', 'raw: echo payload');
    $t->ws_send($s, opcode => 8, payload => pack('n', 1000));
    $fr = $t->ws_read_frame($s, 10);
    is($fr && $fr->{close_code}, 1000, 'raw: close 1000 echoed');
    ok($t->ws_wait_eof($s, 10), 'raw: server closes TCP after close');

    # Test::Mojo: the higher-level client
    $tm->websocket_ok($t->ws_url('/collab/echo', $t->port(3)))
       ->send_ok('mojo hello')
       ->message_ok->message_is('mojo hello')
       ->finish_ok;
}

done_testing;
