# The WebSocket closing handshake (RFC 6455, 5.5.1, 7.1.5 and 7.4), client
# initiated, on collab_echo: the server echoes a valid status code (and
# answers a close without one with 1000), fails an invalid code, a
# one-byte payload or a reason that is not UTF-8, ignores anything the
# client sends after its close, and then closes the TCP connection itself.
#
# Why: Autobahn|Testsuite section 7 checks exactly this, and a server that
# answers a close with the wrong code, or waits for the client to drop the
# TCP connection, leaves browsers with a 1006 "abnormal closure" instead of
# a clean close.  The valid/invalid code lists are data-driven: each code
# is one case on its own connection.

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(sleep time);
use Collab::Test;

my $t = Collab::Test->new;

$t->start_nginx(<<'EOF');
    server {
        listen 127.0.0.1:%%PORT%%;

        location /echo { collab_echo; }
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

sub close_payload {
    my ($code, $reason) = @_;
    return pack('n', $code) . ($reason // '');
}

# every frame the server sends until EOF (or the timeout)
sub frames_until_eof {
    my ($s, $timeout) = @_;
    my @f;
    while (my $f = $t->ws_read_frame($s, $timeout)) {
        push @f, $f;
    }
    return (\@f, $t->{ws_error} // 'eof');
}

# name, bytes, the frames expected before the server's close (opcode,
# payload), the code of the server's close
my @cases = (
    ['close 1000', [f(opcode => 8, payload => close_payload(1000))], [], 1000],
    ['close without a payload is answered with 1000',
     [f(opcode => 8)], [], 1000],
    ['close 1000 with a reason',
     [f(opcode => 8, payload => close_payload(1000, 'bye now'))], [], 1000],
    ['close 1001 with a UTF-8 reason',
     [f(opcode => 8, payload => close_payload(1001, "au revoir \xc3\xa9"))],
     [], 1001],
    ['close 4000 with a 123-byte reason (the most that fits)',
     [f(opcode => 8, payload => close_payload(4000, 'r' x 123))], [], 4000],
    (map {
        my $code = $_;
        ["valid code $code is echoed",
         [f(opcode => 8, payload => close_payload($code))], [], $code],
     } 1000 .. 1003, 1007 .. 1011, 3000, 3999, 4000, 4999),
    (map {
        my $code = $_;
        ["invalid code $code gets 1002",
         [f(opcode => 8, payload => close_payload($code))], [], 1002],
     } 0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535),
    ['invalid code 1005 with a reason gets 1002',
     [f(opcode => 8, payload => close_payload(1005, 'no'))], [], 1002],
    ['a 1-byte close payload gets 1002',
     [f(opcode => 8, payload => "\x03")], [], 1002],
    ['a reason that is not UTF-8 gets 1007',
     [f(opcode => 8, payload => close_payload(1000, "bad \xff reason"))],
     [], 1007],
    ['a reason with a truncated UTF-8 sequence gets 1007',
     [f(opcode => 8, payload => close_payload(1000, "cut \xe2\x82"))],
     [], 1007],
    ['a message, then close, in one write: echo, then 1000',
     [f(payload => 'last words') . f(opcode => 8, payload => close_payload(1000))],
     [[1, 'last words']], 1000],
    ['data after the close is ignored (same write)',
     [f(opcode => 8, payload => close_payload(1000)) . f(payload => 'ghost')
      . f(opcode => 9, payload => 'ghost ping')],
     [], 1000],
    ['close in the middle of a fragmented message: no echo',
     [f(payload => 'unfinished', fin => 0),
      f(opcode => 8, payload => close_payload(1000))], [], 1000],
    ['a ping before the close is answered',
     [f(opcode => 9, payload => 'are you there')
      . f(opcode => 8, payload => close_payload(1000))],
     [[10, 'are you there']], 1000],
);

for my $c (@cases) {
    my ($name, $send, $expect, $code) = @$c;

    subtest $name => sub {
        my $s = $t->ws_raw('/echo');
        send_raw($s, $_) for @$send;

        my ($frames, $end) = frames_until_eof($s, 10);
        is($end, 'eof', 'the server closes the TCP connection');

        my @close = grep { $_->{opcode} == 8 } @$frames;
        is(scalar @close, 1, 'exactly one close frame');
        is($close[0] && $close[0]{close_code}, $code, "close code $code");
        is($frames->[-1] && $frames->[-1]{opcode}, 8,
           'nothing after the close frame');

        my @before = grep { $_->{opcode} != 8 } @$frames;
        is_deeply([map { [$_->{opcode}, $_->{payload}] } @before], $expect,
                  'frames before the close')
            or diag(explain(\@before));
        close $s;
    };
}

# data sent after the close, in a later write: still no echo, and the
# server's close arrives once
subtest 'data after the close is ignored (separate writes)' => sub {
    my $s = $t->ws_raw('/echo');
    send_raw($s, f(opcode => 8, payload => close_payload(1000)));
    my $close = $t->ws_read_frame($s, 10);
    is($close && $close->{close_code}, 1000, 'close 1000 answered');
    send_raw($s, f(payload => 'too late'));
    my ($frames, $end) = frames_until_eof($s, 10);
    is($end, 'eof', 'then EOF');
    is(scalar @$frames, 0, 'no echo of the late message')
        or diag(explain($frames));
    close $s;
};

# the close frame is parsed across reads like any other frame
subtest 'a close frame dribbled one byte per write' => sub {
    my $s = $t->ws_raw('/echo');
    setsockopt($s, 6, 1, 1);        # IPPROTO_TCP, TCP_NODELAY
    for my $b (split //, f(opcode => 8, payload => close_payload(3001, 'x'))) {
        send_raw($s, $b);
        select(undef, undef, undef, 0.01);
    }
    my ($frames, $end) = frames_until_eof($s, 10);
    is($end, 'eof', 'the server closes TCP');
    is(scalar @$frames, 1, 'one frame');
    is($frames->[0] && $frames->[0]{close_code}, 3001, 'code 3001 echoed');
    close $s;
};

# the client drops TCP without a close frame: nothing to answer, but the
# server must notice, log it at info and keep serving others
subtest 'client goes away without a close frame' => sub {
    my $s = $t->ws_raw('/echo');
    send_raw($s, f(payload => 'x', fin => 0));
    close $s;

    my $s2 = $t->ws_raw('/echo');
    send_raw($s2, f(payload => 'still here'));
    my $f = $t->ws_read_frame($s2, 10);
    is($f && $f->{payload}, 'still here', 'another connection still echoes');
    close $s2;

    my $deadline = time + 10;
    sleep 0.1 until $t->error_log =~ /without a close frame/
                    || time > $deadline;
    like($t->error_log, qr/\[info\].*without a close frame/,
         'logged at info');
};

done_testing();
