# Server-side keepalive and timeouts: collab_ping_interval sends pings,
# collab_ping_timeout drops a client that does not answer, an answered
# ping keeps the connection, collab_idle_timeout closes with 1001 when no
# message arrives (pongs do not count), and collab_close_timeout drops a
# client that never answers the server's close frame.
#
# Why: behind NATs and proxies a dead TCP peer is only found by talking to
# it, and idle chat tabs must not hold connections forever.  The timings
# are short (1-2 s) to keep the file fast, so the checks are loose on
# purpose: "it happened" is asserted with a deadline several times the
# configured value, and "it did not happen" only over a window well inside
# it (or while the client keeps the connection busy).  No duration is
# asserted.

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(sleep time);
use Collab::Test;

my $t = Collab::Test->new;

$t->start_nginx(<<'EOF');
    server {
        listen 127.0.0.1:%%PORT%%;

        location /ka {
            collab_echo;
            collab_ping_interval 1s;
            collab_ping_timeout 1s;
        }

        location /idle {
            collab_echo;
            collab_ping_interval 1s;
            collab_ping_timeout 1s;
            collab_idle_timeout 2s;
        }

        location /busy {
            collab_echo;
            collab_ping_interval 0;
            collab_idle_timeout 3s;
        }

        location /linger {
            collab_echo;
            collab_ping_interval 0;
            collab_idle_timeout 1s;
            collab_close_timeout 1s;
        }

        location /quiet {
            collab_echo;
            collab_ping_interval 0;
        }
    }
EOF

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

# reads frames until $until (absolute time), answering pings when $answer;
# first => 1 returns at the first frame that is not a ping; returns
# {pings, frames (non-ping), end: 'eof', 'close', 'frame' or 'timeout'}
sub converse {
    my ($s, $until, %o) = @_;
    my %r = (pings => 0, frames => [], end => 'timeout');
    while ((my $left = $until - time) > 0) {
        my $fr = $t->ws_read_frame($s, $left);
        if (!$fr) {
            $r{end} = $t->{ws_error} // 'eof';
            last;
        }
        if ($fr->{opcode} == 9) {
            $r{pings}++;
            send_raw($s, f(opcode => 10, payload => $fr->{payload}))
                if $o{answer};
            next;
        }
        push @{ $r{frames} }, $fr;
        if ($fr->{opcode} == 8) {
            $r{end} = 'close';
            last;
        }
        if ($o{first}) {
            $r{end} = 'frame';
            last;
        }
    }
    return \%r;
}

sub wait_log {
    my ($re, $timeout) = @_;
    my $end = time + $timeout;
    sleep 0.1 until $t->error_log =~ $re || time > $end;
    return $t->error_log =~ $re;
}

subtest 'collab_ping_interval 1s: the client receives a ping' => sub {
    my $s = $t->ws_raw('/ka');
    my $fr = $t->ws_read_frame($s, 10);
    ok($fr, 'a frame arrives') or return;
    is($fr->{opcode}, 9, 'it is a ping');
    ok($fr->{fin} && !$fr->{masked}, 'final and unmasked');
    cmp_ok(length $fr->{payload}, '<=', 125, 'a control-sized payload');
    close $s;
};

subtest 'answering pings keeps the connection open past 3s' => sub {
    my $s = $t->ws_raw('/ka');
    my $start = time;
    my $r = converse($s, $start + 3.5, answer => 1);

    is($r->{end}, 'timeout', 'no close and no EOF while pongs are sent')
        or diag(explain($r));
    cmp_ok($r->{pings}, '>=', 1, 'pings arrived and were answered');
    is(scalar @{ $r->{frames} }, 0, 'nothing but pings');

    send_raw($s, f(payload => 'still alive'));
    my $e = converse($s, time + 10, answer => 1, first => 1);
    my ($echo) = @{ $e->{frames} };
    is($echo && $echo->{payload}, 'still alive', 'and it still echoes');
    close $s;
};

subtest 'not answering pings: the server closes the TCP connection' => sub {
    my $s = $t->ws_raw('/ka');
    my $r = converse($s, time + 20, answer => 0);
    is($r->{end}, 'eof', 'the server drops the connection')
        or diag(explain($r));
    cmp_ok($r->{pings}, '>=', 1, 'after sending a ping');
    ok(wait_log(qr/no pong from client/, 10), 'logged "no pong from client"');
    close $s;
};

subtest 'collab_idle_timeout 2s: close 1001 when no message arrives' => sub {
    my $s = $t->ws_raw('/idle');

    # well inside the 2 s: still open
    my $r = converse($s, time + 0.5, answer => 1);
    is($r->{end}, 'timeout', 'not closed within the first 0.5 s');

    $r = converse($s, time + 20, answer => 1);
    is($r->{end}, 'close', 'then a close frame arrives, pongs or not')
        or diag(explain($r));
    my $close = $r->{frames}[-1];
    is($close && $close->{close_code}, 1001, 'with 1001 (going away)');

    send_raw($s, f(opcode => 8, payload => pack('n', 1001)));
    ok($t->ws_wait_eof($s, 10), 'the server closes TCP after our close');
    close $s;
};

subtest 'messages keep an idle-timeout connection open' => sub {
    my $s = $t->ws_raw('/busy');
    my $end = time + 4.5;               # beyond collab_idle_timeout 3s
    my ($sent, $echoed, $closed) = (0, 0, 0);
    while (time < $end) {
        send_raw($s, f(payload => 'tick ' . ++$sent));
        my $fr = $t->ws_read_frame($s, 10);
        if (!$fr || $fr->{opcode} == 8) {
            $closed = 1;
            last;
        }
        $echoed++ if $fr->{payload} eq "tick $sent";
        sleep 0.25;
    }
    ok(!$closed, 'no close while a message arrives every 0.25 s');
    is($echoed, $sent, "all $sent messages echoed");
    close $s;
};

subtest 'collab_close_timeout: a client that never answers the close '
        . 'is dropped' => sub {
    my $s = $t->ws_raw('/linger');
    my $r = converse($s, time + 20, answer => 0);
    is($r->{end}, 'close', 'close frame (idle timeout)');
    is($r->{frames}[-1] && $r->{frames}[-1]{close_code}, 1001, '1001');

    # no answer: the server must not wait forever
    ok($t->ws_wait_eof($s, 20), 'the server closes TCP by itself');
    ok(wait_log(qr/closing handshake timed out/, 10),
       'logged "closing handshake timed out"');
    close $s;
};

subtest 'collab_ping_interval 0: no pings at all' => sub {
    my $s = $t->ws_raw('/quiet');
    my $r = converse($s, time + 1.5, answer => 0);
    is($r->{end}, 'timeout', 'nothing arrives and nothing closes');
    is($r->{pings}, 0, 'no ping');
    close $s;
};

done_testing();
