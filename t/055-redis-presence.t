#!/usr/bin/perl
#
# 055-redis-presence.t: presence and typing across nginx instances through
# Redis (issue 5: "presence and typing cross instances"; "an instance
# killed with kill -9 -> its users go offline on the other within the
# timeout").
#
# Two nginx instances (2 workers each) share one PostgreSQL and one Redis;
# each has its own collab_zone (separate shared memory): what one knows of
# the other's users comes only through Redis ("P" presence messages on the
# session's channel, "S" sync requests, "H" heartbeats on collab:hosts).
#
#   - alice joins a public session on A; bob joins it on B: bob learns of
#     alice (B asked A with "S" when it subscribed) in his "joined"
#     snapshot or in a presence event right after it, and alice gets a
#     presence event joining bob;
#   - bob goes away: alice sees the update;
#   - bob types: alice gets typing on, then off once collab_typing_timeout
#     (2s) has passed, bob never sending on: false;
#   - bob's message reaches alice exactly once;
#   - bob disconnects: alice gets his leave (after collab_presence_grace);
#   - carol joins on B, then instance B is killed with kill -9 (its whole
#     process group: master and workers, so no "P" offline is ever sent):
#     alice gets carol's leave once A has not heard of B for
#     collab_presence_timeout (3s; waited for up to 15s), and "sessions"
#     on A counts alice alone.
#
# No duration is asserted: waits are generous deadlines, timings are only
# noted.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use Collab::Test;

{
# --- a collab.v1 client on the harness's raw WebSocket ----------------------
#
# (The client of t/04x-presence-*.t, itself after the one of
# t/03x-chat-*.t.)  Frames from the server are parsed into an inbox of
# decoded JSON messages as they arrive; take() removes the first message a
# predicate accepts, waiting for more if needed, so replies and events may
# interleave in any order without being lost.  The identity is passed in
# the query string (collab_user $arg_user; collab_user_name $arg_name).

package Chat;

use strict;
use warnings;

use IO::Select;
use Mojo::JSON qw(decode_json encode_json);
use Time::HiRes qw(time);

my $NREF = 0;

# Chat->open($t, user => 'ann', name => 'Ann', port => ...)
sub open {
    my ($class, $t, %o) = @_;
    my $path = '/chat?user=' . $o{user};
    $path .= '&name=' . $o{name} if defined $o{name};
    my %h = ('Sec-WebSocket-Protocol' => 'collab.v1');
    $h{-port} = $o{port} if defined $o{port};
    my $s = $t->ws_raw($path, %h);
    my $self = bless { t => $t, s => $s, inbox => [], user => $o{user},
                       port => $o{port} // $t->port }, $class;
    $self->_parse;
    return $self;
}

sub user { $_[0]{user} }

sub close {
    my ($self) = @_;
    CORE::close($self->{s}) if $self->{s} && !$self->{closed}++;
    $self->{eof} = 1;
}

sub send {
    my ($self, $req) = @_;
    return $self->{t}->ws_send($self->{s}, opcode => 1,
                               payload => encode_json($req));
}

sub _parse {
    my ($self) = @_;
    my $s = $self->{s};
    my $buf = \${*$s}{collab_buf};
    while (1) {
        my $have = length $$buf;
        last if $have < 2;
        my ($b0, $b1) = unpack 'CC', $$buf;
        my $len = $b1 & 0x7f;
        my $off = 2;
        if ($len == 126) {
            last if $have < 4;
            $len = unpack 'n', substr($$buf, 2, 2);
            $off = 4;
        } elsif ($len == 127) {
            last if $have < 10;
            $len = unpack 'Q>', substr($$buf, 2, 8);
            $off = 10;
        }
        $off += 4 if $b1 & 0x80;
        last if $have < $off + $len;
        my $payload = substr($$buf, $off, $len);
        substr($$buf, 0, $off + $len, '');

        my ($fin, $op) = ($b0 & 0x80, $b0 & 0x0f);
        if ($op == 9) {
            $self->{t}->ws_send($s, opcode => 10, payload => $payload);
            next;
        }
        next if $op == 10;
        if ($op == 8) {
            $self->{close_code} = length $payload >= 2
                ? unpack('n', $payload) : 0;
            next;
        }
        if ($op == 0) {
            $self->{frag} .= $payload;
            next unless $fin;
            $payload = delete $self->{frag};
            $op = 1;
        } elsif (!$fin) {
            $self->{frag} = $payload;
            next;
        }
        next if $op != 1;
        my $msg = eval { decode_json($payload) }
            // { op => '(not JSON)', raw => $payload };
        push @{ $self->{inbox} }, $msg;
    }
}

sub _read {
    my ($self) = @_;
    my $n = sysread($self->{s}, my $chunk, 1 << 18);
    if (!defined $n) {
        return 1 if $!{EINTR} || $!{EAGAIN};
        $self->{eof} = 1;
        return 0;
    }
    if ($n == 0) {
        $self->{eof} = 1;
        return 0;
    }
    ${*{ $self->{s} }}{collab_buf} .= $chunk;
    $self->_parse;
    return 1;
}

# Chat::pump($timeout, @clients): waits up to $timeout for any of them to
# be readable and reads those that are
sub pump {
    my ($timeout, @c) = @_;
    @c = grep { !$_->{eof} } @c;
    if (!@c) {
        select(undef, undef, undef, $timeout) if $timeout > 0;
        return 0;
    }
    my %by = map { fileno($_->{s}) => $_ } @c;
    my @r = IO::Select->new(map { $_->{s} } @c)->can_read($timeout);
    $by{ fileno $_ }->_read for @r;
    return scalar @r;
}

# Chat::settle($secs, @clients): reads whatever arrives for $secs
sub settle {
    my ($secs, @c) = @_;
    my $end = time + $secs;
    pump($end - time, @c) while time < $end;
}

# the first message the predicate ($_) accepts, removed from the inbox;
# undef after $timeout seconds or at EOF
sub take {
    my ($self, $pred, $timeout) = @_;
    my $end = time + ($timeout // 10);
    while (1) {
        my $in = $self->{inbox};
        for my $i (0 .. $#$in) {
            local $_ = $in->[$i];
            return splice(@$in, $i, 1) if $pred->();
        }
        return undef if $self->{eof} || time >= $end;
        pump($end - time, $self);
    }
}

# every message of the inbox the predicate accepts, removed from it
sub grab {
    my ($self, $pred) = @_;
    my (@yes, @no);
    for (@{ $self->{inbox} }) {
        if ($pred->()) { push @yes, $_ } else { push @no, $_ }
    }
    $self->{inbox} = \@no;
    return @yes;
}

# sends the request with a fresh "ref" and returns the reply to it
sub req {
    my ($self, %r) = @_;
    my $timeout = delete $r{-timeout} // 15;
    $r{ref} //= 'r' . ++$NREF;
    my $ref = $r{ref};
    $self->send(\%r);
    return $self->take(sub { defined $_->{ref} && $_->{ref} eq $ref },
                       $timeout)
        // { op => '(no reply)', ref => $ref };
}

# ops without a reply on success (presence, typing): the request, then a
# ping; the error to the request if any, else undef (the ping's pong
# proves the request was handled)
sub quiet {
    my ($self, %r) = @_;
    my $ref = 'q' . ++$NREF;
    $self->send({ %r, ref => $ref });
    my $pong = $self->req(op => 'ping');
    my $err = $self->take(sub { ($_->{ref} // '') eq $ref }, 0);
    return $err if $err;
    return $pong->{op} eq 'pong' ? undef : $pong;
}

sub join_session {
    my ($self, $slug, %o) = @_;
    return $self->req(op => 'join', session => $slug, %o);
}

# --- presence events --------------------------------------------------------

# as a grab() predicate ($_) or a function
sub is_presence { ((@_ ? $_[0] : $_)->{op} // '') eq 'presence' }

# (user => $item) of an event's list
sub items {
    my ($ev, $list) = @_;
    return map { $_->{user} => $_ } @{ $ev->{$list} // [] };
}

# waits for a presence event whose $list ("joins", "leaves", "updates")
# has $user (and status $status when given); returns that item
sub wait_presence {
    my ($self, $list, $user, $status, $timeout) = @_;
    my $item;
    my $ev = $self->take(sub {
        return 0 unless is_presence($_);
        my %i = items($_, $list);
        return 0 unless $i{$user};
        return 0 if defined $status && ($i{$user}{status} // '') ne $status;
        $item = $i{$user};
        1;
    }, $timeout // 10);
    return $ev ? $item : undef;
}

sub wait_typing {
    my ($self, $user, $on, $timeout) = @_;
    return $self->take(sub {
        ($_->{op} // '') eq 'typing' && ($_->{user} // '') eq $user
            && !!$_->{on} == !!$on
    }, $timeout // 10);
}

# --- Redis over a socket (RESP) ---------------------------------------------

package Redis::Tiny;

use Carp qw(croak);
use IO::Socket::INET;

sub cmd {
    my ($port, @args) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                  Proto => 'tcp', Timeout => 5)
        or croak "redis: connect $port: $!";
    binmode $s;
    print $s '*' . @args . "\r\n"
        . join('', map { '$' . length($_) . "\r\n$_\r\n" } @args);
    my $r = _reply($s);
    CORE::close($s);
    return $r;
}

sub _reply {
    my ($s) = @_;
    my $line = <$s> // croak "redis: no reply";
    $line =~ s/\r\n$//;
    my ($type, $rest) = (substr($line, 0, 1), substr($line, 1));
    return $rest if $type eq '+' || $type eq ':';
    return { error => $rest } if $type eq '-';
    if ($type eq '$') {
        return undef if $rest < 0;
        my $data = '';
        while (length $data < $rest + 2) {
            read($s, $data, $rest + 2 - length $data, length $data)
                or croak "redis: short read";
        }
        return substr($data, 0, $rest);
    }
    if ($type eq '*') {
        return undef if $rest < 0;
        return [map { _reply($s) } 1 .. $rest];
    }
    croak "redis: bad reply '$line'";
}

}

my $t = Collab::Test->new;
$t->start_pg;
$t->start_redis;

my $conf = <<'CONF';
    collab_postgres "%%PG_DSN%%" pool=4 timeout=30s;
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    collab_zone collab 8m;
    collab_presence_timeout 3s;
    collab_presence_grace 1s;
    collab_typing_timeout 2s;
    collab_presence_batch 100ms;
    collab_rate_presence 100r/s burst=100;
    collab_rate_messages 100r/s burst=100;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /chat {
            collab_websocket;
            collab_user $arg_user;
            collab_user_name $arg_name;
        }
    }
CONF

(my $conf_b = $conf) =~ s/%%PORT%%/%%PORT2%%/;
$t->start_nginx($conf, name => 'a', worker_processes => 2);
$t->start_nginx($conf_b, name => 'b', worker_processes => 2);
my %port = (a => $t->port(1), b => $t->port(2));
is(scalar(() = $t->nginx_worker_pids('b')), 2, 'instance b has 2 workers');

# every worker of both instances listens for heartbeats
my $hosts = 'collab:hosts';
my $numsub;
for (1 .. 100) {
    $numsub = Redis::Tiny::cmd($t->redis_port, 'PUBSUB', 'NUMSUB', $hosts);
    last if ($numsub->[1] // 0) == 4;
    sleep 0.05;
}
is($numsub->[1], 4, "$hosts has one subscriber per worker (4)");

sub open_user {
    my ($inst, $user, $name) = @_;
    return Chat->open($t, user => $user, name => $name, port => $port{$inst});
}

sub snapshot { map { $_->{user} => $_ } @{ $_[0]{presence} // [] } }

sub typing_events {
    my ($c, $user) = @_;
    return $c->grab(sub {
        ($_->{op} // '') eq 'typing' && ($_->{user} // '') eq $user
    });
}

my $alice = open_user('a', 'alice', 'Alice');
my $r = $alice->req(op => 'create', title => 'hosts', isPublic => \1);
my $slug = $r->{session}{id};
ok($slug, 'session created') or BAIL_OUT('no session: ' . explain($r));

my $j = $alice->join_session($slug);
is($j->{op}, 'joined', 'alice joined on a');
my %p = snapshot($j);
is_deeply([sort keys %p], ['alice'], "alice's snapshot: alice alone");

# --- a join on the other instance: sync and join event ----------------------

# b has heard nothing of alice before this join (no worker of b was in
# the session): her presence in the "joined" can only come from b's "S"
# and a's answer; when it is missing the diag shows whether she came as a
# join event right after (the reply was built before the answer arrived)
my $bob = open_user('b', 'bob', 'Bob');
$j = $bob->join_session($slug);
is($j->{op}, 'joined', 'bob joined on b');
%p = snapshot($j);
ok($p{bob}, "bob's snapshot on b has bob");

# The first join of a session on a host asks the others ("S") without
# waiting for their answer (docs/PROTOCOL.md): alice of a is in bob's
# snapshot, or comes as a presence join right after it.
unless ($p{alice}) {
    my $ev = $bob->wait_presence('joins', 'alice', undef, 10);
    $p{alice} = $ev if $ev;
    note('alice came as a join event after the snapshot') if $ev;
}
ok($p{alice}, "bob learns of alice of a (sync), in the snapshot or at once");
is($p{alice} && $p{alice}{status}, 'online', 'alice online');
is($p{alice} && $p{alice}{userName}, 'Alice', 'with her name');

my $item = $alice->wait_presence('joins', 'bob', undef, 10);
ok($item, 'alice gets a presence event joining bob of b');
is($item && $item->{status}, 'online', 'bob online');
is($item && $item->{userName}, 'Bob', 'with his name');
ok($item && defined $item->{typing} && !$item->{typing},
   'not typing');

# --- away -------------------------------------------------------------------

is($bob->quiet(op => 'presence', session => $slug, status => 'away'),
   undef, 'bob away: accepted');
$item = $alice->wait_presence('updates', 'bob', 'away', 10);
ok($item, 'alice sees bob away');
ok($item && $item->{lastSeen}, 'the update has lastSeen');

is($bob->quiet(op => 'presence', session => $slug, status => 'online'),
   undef, 'bob online again');
ok($alice->wait_presence('updates', 'bob', 'online', 10),
   'alice sees bob online');

# --- typing, ending by the timeout ------------------------------------------

Chat::settle(0.3, $alice, $bob);
$alice->grab(sub { 1 });

is($bob->quiet(op => 'typing', session => $slug, on => \1), undef,
   'bob types: accepted');
my $t_on = time;
my $ev = $alice->wait_typing('bob', 1, 10);
ok($ev, 'alice gets typing {user: bob, on: true}');
is($ev && $ev->{session}, $slug, 'for the session');

# bob sends nothing more: the indicator ends with collab_typing_timeout
$ev = $alice->wait_typing('bob', 0, 15);
ok($ev, 'alice gets typing {user: bob, on: false} without bob saying so');
note(sprintf 'typing off %.1fs after on was sent (typing timeout 2s)',
     time - $t_on) if $ev;
Chat::settle(0.5, $alice);
is(scalar(typing_events($alice, 'bob')), 0,
   'no other typing event about bob meanwhile');

# --- a message, once --------------------------------------------------------

$r = $bob->req(op => 'send', session => $slug, body => 'hi from b',
               clientMsgId => 'b1');
is($r->{op}, 'ack', 'bob sends on b');
my $m = $alice->take(sub {
    ($_->{op} // '') eq 'message' && ($_->{clientMsgId} // '') eq 'b1'
}, 10);
ok($m, 'alice gets the message');
is($m && $m->{user}, 'bob', 'from bob');
is($m && $m->{body}, 'hi from b', 'with its body');
is($m && $m->{seq}, $r->{seq}, "with the ack's seq") if defined $r->{seq};
Chat::settle(1, $alice, $bob);
is(scalar($alice->grab(sub { ($_->{op} // '') eq 'message' })), 0,
   'and only once');

# --- a disconnect: leave after the grace ------------------------------------

$alice->grab(sub { 1 });
my $t_close = time;
$bob->close;
$item = $alice->wait_presence('leaves', 'bob', undef, 15);
ok($item, 'bob disconnects: alice gets his leave');
is($item && $item->{status}, 'offline', 'offline');
note(sprintf 'leave %.1fs after the close (grace 1s)', time - $t_close)
    if $item;

# --- instance b killed ------------------------------------------------------

my $carol = open_user('b', 'carol', 'Carol');
is($carol->join_session($slug)->{op}, 'joined', 'carol joined on b');
ok($alice->wait_presence('joins', 'carol', undef, 10),
   'alice sees carol of b join');
$r = $alice->req(op => 'sessions');
my ($s) = grep { $_->{id} eq $slug } @{ $r->{sessions} // [] };
is($s && $s->{activeUsers}, 2, 'sessions on a: activeUsers 2 (alice, carol)');
Chat::settle(0.3, $alice, $carol);
$alice->grab(sub { 1 });

my $master = $t->nginx_master_pid('b');
my @workers_b = $t->nginx_worker_pids('b');
ok($master && @workers_b == 2, 'b: master and 2 workers');

# the daemon master leads its own process group, which its workers share
my @group = grep {
    my $st = Collab::Test::_read_file("/proc/$_/stat") // '';
    my ($pgrp) = $st =~ /^\d+ \(.*\) \S \d+ (\d+)/s;
    ($pgrp // 0) == $master
} $master, @workers_b;
is(scalar @group, 3, 'b: master and workers in one process group');

my $t_kill = time;
ok(kill('KILL', -$master), 'kill -9 of b (its process group)');
sleep 0.02 while grep({ Collab::Test::alive($_) } $master, @workers_b)
                 && time - $t_kill < 10;
is(scalar(grep { Collab::Test::alive($_) } $master, @workers_b), 0,
   'b: every process is gone');

# every presence event until carol's leave: alice must not leave in any
my (@after_kill, %left);
my $until = time + 15;
while (!$left{carol} && time < $until) {
    my $pev = $alice->take(\&Chat::is_presence, $until - time) or last;
    push @after_kill, $pev;
    %left = (%left, Chat::items($pev, 'leaves'));
}
$item = $left{carol};
ok($item, "alice gets carol's leave (b silent for the presence timeout)");
is($item && $item->{status}, 'offline', 'offline');
note(sprintf "carol's leave %.1fs after the kill (presence timeout 3s)",
     time - $t_kill) if $item;

$r = $alice->req(op => 'sessions');
($s) = grep { $_->{id} eq $slug } @{ $r->{sessions} // [] };
is($s && $s->{activeUsers}, 1, 'sessions on a: activeUsers 1 (alice)');

my $dan = open_user('a', 'dan', 'Dan');
$j = $dan->join_session($slug);
%p = snapshot($j);
is_deeply([sort keys %p], [qw(alice dan)],
          "a newcomer's snapshot on a: alice and dan, no ghost of b");

Chat::settle(0.5, $alice);
push @after_kill, $alice->grab(\&Chat::is_presence);
is_deeply([grep { $_->{user} eq 'alice' }
           map { @{ $_->{leaves} // [] }, @{ $_->{updates} // [] } }
           @after_kill], [], 'nothing changed for alice herself');

for (1 .. 100) {
    $numsub = Redis::Tiny::cmd($t->redis_port, 'PUBSUB', 'NUMSUB', $hosts);
    last if ($numsub->[1] // 0) == 2;
    sleep 0.05;
}
is($numsub->[1], 2, "$hosts: a's 2 workers are left");

$_->close for $alice, $carol, $dan;

done_testing();
