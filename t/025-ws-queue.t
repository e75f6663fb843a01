# The bounded per-connection send queue (collab_send_queue_size) and the
# fan-out path, on a "collab_echo broadcast" location: every message goes
# to every connection of the worker, encoded once.
#
# Three connections: A sends many 4 KiB messages, B reads everything, S
# (the slow consumer) never reads and has a tiny receive buffer (and the
# server socket a small send buffer, so that the kernel does not swallow
# megabytes first).  S's
# queue fills; the server must cut S off (close 1008, an info line in
# error.log naming collab_send_queue_size) instead of letting the queue
# grow, while A and B receive every message, in order.  When S finally
# reads, it finds an unbroken prefix of the messages, then the close 1008,
# then EOF: a frame partly written when the queue overflowed is finished,
# never cut.
#
# Why: the issue requires "a slow consumer being cut off while others are
# unaffected"; one stalled browser tab must cost bounded memory and must
# not slow down a room.

use strict;
use warnings;

use Test::More;
use Errno qw(EAGAIN EINTR EWOULDBLOCK);
use IO::Select;
use Socket qw(PF_INET SOCK_STREAM SOL_SOCKET SO_RCVBUF IPPROTO_TCP
              inet_aton pack_sockaddr_in);
use Time::HiRes qw(sleep time);
use Collab::Test;

my $t = Collab::Test->new;

$t->start_nginx(<<'EOF');
    server {
        # a small kernel send buffer: the queue, not the kernel, must be
        # what fills up (loopback autotuning grows it to megabytes)
        listen 127.0.0.1:%%PORT%% sndbuf=8k;

        location /bcast {
            collab_echo broadcast;
            collab_send_queue_size 64k;
        }
    }
EOF

my $MESSAGES = 300;                 # 1.2 MB: far beyond what S can hold
my $BATCH = 4;                      # 16 KiB in flight per reader

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

sub message {
    my ($i) = @_;
    my $head = sprintf 'msg %06d ', $i;
    return $head . ('x' x (4096 - length $head));
}

# S: a socket whose receive buffer is set before connect (so the window
# it advertises is small from the start), upgraded by hand.  Returns the
# socket and whatever arrived after the 101 head.
sub slow_consumer {
    socket(my $s, PF_INET, SOCK_STREAM, 0) or die "socket: $!";
    setsockopt($s, SOL_SOCKET, SO_RCVBUF, 4096) or die "SO_RCVBUF: $!";
    connect($s, pack_sockaddr_in($t->port, inet_aton('127.0.0.1')))
        or die "connect: $!";
    binmode $s;

    send_raw($s, "GET /bcast HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        . "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        . "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"
        . "Sec-WebSocket-Version: 13\r\n\r\n");

    my $buf = '';
    my $sel = IO::Select->new($s);
    my $end = time + 10;
    while ($buf !~ /\r\n\r\n/ && time < $end) {
        $sel->can_read(1) or next;
        sysread($s, $buf, 4096, length $buf) or last;
    }
    $buf =~ s{^HTTP/1\.1 101 [^\r]*\r\n.*?\r\n\r\n}{}s
        or die "slow consumer: no 101:\n$buf";
    return ($s, $buf);
}

# everything until EOF or reset (or the timeout): ($bytes, 'eof'|'timeout')
sub read_to_end {
    my ($s, $buf, $timeout) = @_;
    my $sel = IO::Select->new($s);
    my $end = time + $timeout;
    while ((my $left = $end - time) > 0) {
        $sel->can_read($left) or next;
        my $n = sysread($s, $buf, 65536, length $buf);
        if (!defined $n) {
            next if $! == EINTR || $! == EAGAIN || $! == EWOULDBLOCK;
            return ($buf, 'eof');       # ECONNRESET counts as closed
        }
        return ($buf, 'eof') if $n == 0;
    }
    return ($buf, 'timeout');
}

# server frames (unmasked) from a byte string: list of [opcode, payload];
# a trailing incomplete frame is returned as [-1, bytes left]
sub parse_frames {
    my ($buf) = @_;
    my @f;
    while (length $buf >= 2) {
        my ($b0, $b1) = unpack 'CC', $buf;
        my ($len, $hl) = ($b1 & 0x7f, 2);
        if ($len == 126) {
            last if length $buf < 4;
            ($len, $hl) = (unpack('x2 n', $buf), 4);
        } elsif ($len == 127) {
            last if length $buf < 10;
            ($len, $hl) = (unpack('x2 Q>', $buf), 10);
        }
        last if length $buf < $hl + $len;
        push @f, [$b0 & 0x0f, substr($buf, $hl, $len)];
        substr($buf, 0, $hl + $len, '');
    }
    push @f, [-1, length $buf] if length $buf;
    return @f;
}

my ($S, $s_early) = slow_consumer();
my $A = $t->ws_raw('/bcast');
my $B = $t->ws_raw('/bcast');

# all three are registered as peers once A and B's upgrades are answered;
# S's upgrade was answered before A's, in the same worker

my (@got_a, @got_b, $lost);
my $i = 0;
while ($i < $MESSAGES && !$lost) {
    my @batch = ($i + 1) .. ($i + $BATCH > $MESSAGES ? $MESSAGES : $i + $BATCH);
    send_raw($A, join '', map { f(payload => message($_)) } @batch);
    $i = $batch[-1];

    for my $pair ([$A, \@got_a, 'A'], [$B, \@got_b, 'B']) {
        my ($sock, $got, $who) = @$pair;
        for (@batch) {
            my $fr = $t->ws_read_frame($sock, 20);
            if (!$fr) {
                diag("$who: no frame for message $_: "
                     . ($t->{ws_error} // '?'));
                $lost = 1;
                last;
            }
            push @$got, $fr->{opcode} == 1 ? substr($fr->{payload}, 4, 6)
                                           : "opcode $fr->{opcode}";
        }
    }
}

my @want = map { sprintf '%06d', $_ } 1 .. $MESSAGES;
ok(!$lost, "A and B each got $MESSAGES frames");
is_deeply(\@got_a, \@want, 'A (the sender) received every message in order');
is_deeply(\@got_b, \@want, 'B received every message in order');

# S was cut off, and the reason is in the log
my $deadline = time + 10;
sleep 0.1 until $t->error_log =~ /slow consumer/ || time > $deadline;
like($t->error_log,
     qr/\[info\].*slow consumer.*collab_send_queue_size/,
     'error.log has the "slow consumer" line naming collab_send_queue_size');

my ($s_bytes, $s_end) = read_to_end($S, $s_early, 30);
is($s_end, 'eof', 'S reaches EOF once it reads: the server closed it');

my @sf = parse_frames($s_bytes);
my @data = grep { $_->[0] == 1 } @sf;
my @close = grep { $_->[0] == 8 } @sf;

cmp_ok(scalar @data, '<', $MESSAGES,
       'S did not get every message (' . scalar(@data) . " of $MESSAGES)");
cmp_ok(length $s_bytes, '<', 1024 * 1024,
       'S got far less than was sent (' . length($s_bytes) . ' bytes)');
my @s_ids = map { substr($_->[1], 4, 6) } @data;
is_deeply(\@s_ids, [@want[0 .. $#s_ids]],
          'what S got is an unbroken prefix, each frame whole');
is(scalar @close, 1, 'S got one close frame');
is(@close && unpack('n', $close[0][1]), 1008, 'with 1008 (policy)');
is($sf[-1] && $sf[-1][0], 8, 'the close frame is the last thing S got');
close $S;

# A and B carry on after S is gone
send_raw($A, f(payload => 'after S'));
for my $pair ([$A, 'A'], [$B, 'B']) {
    my $fr = $t->ws_read_frame($pair->[0], 10);
    is($fr && $fr->{payload}, 'after S', "$pair->[1] still receives");
}

# a new peer joins and gets broadcasts too
my $C = $t->ws_raw('/bcast');
send_raw($B, f(opcode => 2, payload => "\x00from B"));
for my $pair ([$A, 'A'], [$B, 'B'], [$C, 'C']) {
    my $fr = $t->ws_read_frame($pair->[0], 10);
    is($fr && $fr->{opcode}, 2, "$pair->[1]: B's binary broadcast");
    is($fr && $fr->{payload}, "\x00from B", "$pair->[1]: same bytes");
}

# a closed peer is gone from the broadcast list: closing A must not
# break B and C
send_raw($A, f(opcode => 8, payload => pack('n', 1000)));
my $ac = $t->ws_read_frame($A, 10);
is($ac && $ac->{close_code}, 1000, 'A closes cleanly');
close $A;
send_raw($C, f(payload => 'from C'));
for my $pair ([$B, 'B'], [$C, 'C']) {
    my $fr = $t->ws_read_frame($pair->[0], 10);
    is($fr && $fr->{payload}, 'from C', "$pair->[1] gets C's message");
}
close $B;
close $C;

done_testing();
