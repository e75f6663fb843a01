# Graceful reload and stop with open WebSockets: "nginx -s reload" (HUP)
# and "nginx -s quit" (QUIT) make the old worker send close 1012 (service
# restart) on every open WebSocket, finish the closing handshake, close the
# TCP connections and exit; after a reload a new connection is served by
# the new worker.
#
# Why: a WebSocket never goes idle on its own, so without this a reload
# would leave old workers running for as long as any client stays, and
# clients would see a 1006 on stop instead of a code that tells them to
# reconnect.  One client in each group does not answer the close frame:
# the server must drop it after collab_close_timeout, not wait forever.

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(sleep time);
use Collab::Test;

my $t = Collab::Test->new;

my $conf = <<'EOF';
    server {
        listen 127.0.0.1:%%PORT%%;

        location /echo {
            collab_echo;
            collab_close_timeout 1s;
        }
    }
EOF

$t->start_nginx($conf);

sub f { Collab::Test::ws_frame(@_) }

sub send_raw {
    my ($s, $bytes) = @_;
    local $SIG{PIPE} = 'IGNORE';
    my $off = 0;
    while ($off < length $bytes) {
        my $n = syswrite($s, $bytes, length($bytes) - $off, $off);
        return 0 unless defined $n;
        $off += $n;
    }
    return 1;
}

sub wait_gone {
    my ($timeout, @pids) = @_;
    my $end = time + $timeout;
    sleep 0.05 while grep({ Collab::Test::alive($_) } @pids) && time < $end;
    return !grep { Collab::Test::alive($_) } @pids;
}

# n echoing connections; the last one has a fragmented message pending
sub open_conns {
    my ($n, $tag) = @_;
    my @s;
    for my $i (1 .. $n) {
        my $s = $t->ws_raw('/echo');
        send_raw($s, f(payload => "$tag $i"));
        my $e = $t->ws_read_frame($s, 10);
        is($e && $e->{payload}, "$tag $i", "$tag: connection $i echoes");
        push @s, $s;
    }
    send_raw($s[-1], f(payload => 'unfinished', fin => 0));
    return @s;
}

# every connection gets close 1012; all but the last answer it; all must
# then see EOF
sub expect_1012 {
    my ($tag, @s) = @_;
    for my $i (0 .. $#s) {
        my $fr = $t->ws_read_frame($s[$i], 15);
        my $n = $i + 1;
        is($fr && $fr->{opcode}, 8, "$tag: connection $n gets a close frame")
            or diag($t->{ws_error} // '?');
        is($fr && $fr->{close_code}, 1012,
           "$tag: connection $n: 1012 (service restart)");
        send_raw($s[$i], f(opcode => 8, payload => pack('n', 1012)))
            unless $i == $#s;
    }
    for my $i (0 .. $#s) {
        my $n = $i + 1;
        ok($t->ws_wait_eof($s[$i], 20),
           "$tag: connection $n is closed by the server"
           . ($i == $#s ? ' (it never answered the close)' : ''));
        close $s[$i];
    }
}

# --- reload -------------------------------------------------------------------

my @old = $t->nginx_worker_pids;
ok(@old, 'worker running: ' . join ' ', @old);

my @s = open_conns(3, 'before reload');

$t->reload_nginx(wait => 0);

expect_1012('reload', @s);

ok(wait_gone(30, @old), 'the old worker exits');

my @new = grep { my $p = $_; !grep { $_ == $p } @old }
          $t->nginx_worker_pids;
ok(@new, 'a new worker runs: ' . join ' ', @new);

my ($fresh) = open_conns(1, 'after reload');
send_raw($fresh, f(opcode => 0, payload => ' now finished'));
my $e = $t->ws_read_frame($fresh, 10);
is($e && $e->{payload}, 'unfinished now finished',
   'a new connection after the reload works');
send_raw($fresh, f(opcode => 8, payload => pack('n', 1000)));
$e = $t->ws_read_frame($fresh, 10);
is($e && $e->{close_code}, 1000, 'and closes normally');
close $fresh;

# --- reload twice, quickly ----------------------------------------------------

@old = $t->nginx_worker_pids;
@s = open_conns(2, 'double reload');
$t->reload_nginx(wait => 0);
$t->reload_nginx(wait => 0);
expect_1012('double reload', @s);
ok(wait_gone(30, @old), 'the first generation of workers exits');

# --- quit ---------------------------------------------------------------------

@s = open_conns(3, 'before quit');
my $master = $t->nginx_master_pid;
my @workers = $t->nginx_worker_pids;
ok($master, "master $master");

kill 'QUIT', $master;

expect_1012('quit', @s);

ok(wait_gone(30, @workers, $master), 'workers and master exit');

like($t->error_log, qr/gracefully shutting down/, 'it was a graceful stop');

done_testing();
