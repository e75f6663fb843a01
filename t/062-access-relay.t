#!/usr/bin/perl
#
# 062-access-relay.t: the access events reach users on another nginx
# (issue 6: "Invitees with a live connection get an invitation event at
# once" - "on any worker or host" in docs/PROTOCOL.md; "A removed
# participant's live connections leave the session at once").
#
# Two nginx instances "a" and "b" share PostgreSQL and Redis
# (collab_redis).  The owner is on a; the invitee has one connection on b
# and one on a, the owner's own worker (each must get the invitation
# exactly once: the relay must not bring a worker's own event back); the
# member joined, member removed, session and deleted events cross from a
# to b; a participant removed on a has its connection on b leave the
# session at once (no more messages, its send -> ACCESS_DENIED), and its
# join from b is refused.
#
# Why: the ops run on the caller's worker, the people they concern are
# anywhere; without the relay they would learn it only on reconnecting.

use strict;
use warnings;
use utf8;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use Collab::Test;

{
# --- a collab.v1 client on the harness's raw WebSocket ----------------------
#
# (The client of t/030-chat-basic.t, copied; it belongs in t/lib
# once more tests need it.)  Frames from the server are parsed as they
# arrive into an inbox of decoded JSON messages; take() removes the first
# one a predicate accepts, waiting for more if needed, so replies and
# events may arrive in any interleaving without being lost.

package Chat;

use strict;
use warnings;

use Carp qw(croak);
use IO::Select;
use Mojo::JSON qw(decode_json encode_json);
use Time::HiRes qw(time);

my $NREF = 0;

# Chat->open($t, user => 'u1', name => 'Ann', port => ..., path => '/chat')
sub open {
    my ($class, $t, %o) = @_;
    my %h = ('Sec-WebSocket-Protocol' => 'collab.v1');
    $h{'X-User-Id'} = $o{user} if defined $o{user};
    $h{'X-User-Name'} = $o{name} if defined $o{name};
    $h{-port} = $o{port} if defined $o{port};
    my $s = $t->ws_raw($o{path} // '/chat', %h);
    my $self = bless { t => $t, s => $s, inbox => [], user => $o{user},
                       frag => undef }, $class;
    $self->_parse;
    return $self;
}

sub user { $_[0]{user} }

sub close {
    my ($self) = @_;
    CORE::close($self->{s}) if $self->{s};
    $self->{eof} = 1;
}

sub send_text {
    my ($self, $text, %frame) = @_;
    return $self->{t}->ws_send($self->{s}, opcode => 1, payload => $text,
                               %frame);
}

sub send {
    my ($self, $req) = @_;
    return $self->send_text(encode_json($req));
}

# parses every complete frame in the socket's buffer into the inbox
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
        $self->{masked}++ if $b1 & 0x80;       # a server must not mask
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
        if ($op != 1) {
            push @{ $self->{inbox} }, { op => "(opcode $op)" };
            next;
        }
        my $msg = eval { decode_json($payload) }
            // { op => '(not JSON)', raw => $payload };
        $msg->{_raw} = $payload if $self->{keep_raw};
        push @{ $self->{inbox} }, $msg;
    }
}

# reads what the socket has (it was reported readable); false on EOF
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
# be readable and reads all that are; returns how many were
sub pump {
    my ($timeout, @c) = @_;
    @c = grep { !$_->{eof} } @c;
    return 0 unless @c;
    my %by = map { fileno($_->{s}) => $_ } @c;
    my @r = IO::Select->new(map { $_->{s} } @c)->can_read($timeout);
    $by{ fileno $_ }->_read for @r;
    return scalar @r;
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

# sends the request with a fresh "ref" (unless it has one) and returns
# the reply carrying that ref
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

# the next $n "message" events in arrival order (fewer on timeout)
sub events {
    my ($self, $n, $timeout) = @_;
    my $end = time + ($timeout // 15);
    my @ev;
    while (@ev < $n) {
        my $e = $self->take(sub { $_->{op} eq 'message' }, $end - time)
            // last;
        push @ev, $e;
    }
    return @ev;
}

# every message event that arrives within $wait seconds
sub drain_events {
    my ($self, $wait) = @_;
    my @ev;
    while (my $e = $self->take(sub { $_->{op} eq 'message' }, $wait)) {
        push @ev, $e;
    }
    return @ev;
}

# the inbox minus what a test does not care about
sub pending {
    my ($self) = @_;
    pump(0, $self);
    return @{ $self->{inbox} };
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
    collab_postgres "%%PG_DSN%%" pool=2 timeout=10s;
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    collab_batch_window 2ms;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /chat {
            collab_websocket;
            collab_user $http_x_user_id;
            collab_user_name $http_x_user_name;
        }
    }
CONF

(my $conf_b = $conf) =~ s/%%PORT%%/%%PORT2%%/;
$t->start_nginx($conf, name => 'a');
$t->start_nginx($conf_b, name => 'b');

my $dbh = $t->pg_dbh;

sub rows { $dbh->selectrow_array($_[0], undef, @_[1 .. $#_]) }

sub err_code {
    my ($r) = @_;
    return $r->{op} eq 'error' ? $r->{code} : "(op $r->{op})";
}

# subscribers of a Redis channel, waiting up to 10 s for $want of them
sub numsub {
    my ($chan, $want) = @_;
    my $n = 0;
    my $end = time + 10;
    while (time < $end) {
        my $r = Redis::Tiny::cmd($t->redis_port, 'PUBSUB', 'NUMSUB', $chan);
        $n = $r->[1] // 0;
        last if $n >= $want;
        sleep 0.05;
    }
    return $n;
}

sub client {
    my ($user, $inst, %o) = @_;
    my $c = Chat->open($t, user => $user, name => $o{name},
                       port => $t->port($inst eq 'a' ? 1 : 2));
    is($c->req(op => 'invitations')->{op}, 'invitations',
       "$user is connected to $inst");
    return $c;
}

# the $op events that arrive within $wait seconds
sub all_events {
    my ($c, $op, $wait) = @_;
    my @e;
    while (my $e = $c->take(sub { $_->{op} eq $op }, $wait // 0.7)) {
        push @e, $e;
    }
    return @e;
}

my $NMSG = 0;

sub flows {
    my ($from, $slug, $why, @to) = @_;
    my $cmid = 'm' . ++$NMSG;
    my $r = $from->req(op => 'send', session => $slug, body => $cmid,
                       clientMsgId => $cmid);
    is($r->{op}, 'ack', "$why: acked") or diag(explain($r));
    for my $c (@to) {
        my $e = $c->take(sub { $_->{op} eq 'message'
                               && ($_->{clientMsgId} // '') eq $cmid });
        ok($e, "$why: " . $c->user . ' receives it');
    }
}

is(numsub('collab:users', 2), 2,
   'both instances listen on the users channel');

my $ann = client('ann', 'a', name => 'Ann');
my $bob = client('bob', 'b', name => 'Bob');
my $bob_a = client('bob', 'a', name => 'Bob');
my $carl = client('carl', 'b');
my $dan = client('dan', 'b', name => 'Dan');

my $r = $ann->req(op => 'create', title => 'Relay');
my $slug = $r->{session}{id};
my $sid = rows('SELECT id FROM chat_sessions WHERE slug = ?', $slug);
is($ann->req(op => 'join', session => $slug)->{op}, 'joined',
   'ann creates a private session on a and joins it');


# --- invitation, accept, member joined, messages ----------------------------

$r = $ann->req(op => 'invite', session => $slug, user => 'bob');
is($r->{op}, 'invited', 'ann invites bob');
my $inv = $r->{invitation};
my @ev = all_events($bob, 'invitation');
is_deeply(\@ev, [{ op => 'invitation', invitation => $inv }],
          'bob on b gets the invitation once') or diag(explain(\@ev));
@ev = all_events($bob_a, 'invitation', 0.3);
is_deeply(\@ev, [{ op => 'invitation', invitation => $inv }],
          "bob's tab on the owner's worker gets it once")
    or diag(explain(\@ev));
is(scalar(all_events($ann, 'invitation', 0.1)), 0, 'ann gets none');
is(scalar(all_events($carl, 'invitation', 0.1)), 0, 'carl gets none');

$r = $bob->req(op => 'accept', invitation => $inv->{id});
is($r->{op}, 'accepted', 'bob accepts on b');
@ev = all_events($ann, 'member');
is_deeply(\@ev, [{ op => 'member', session => $slug, user => 'bob',
                   userName => 'Bob', action => 'joined' }],
          'ann on a sees bob join, once') or diag(explain(\@ev));

is($bob->req(op => 'join', session => $slug)->{op}, 'joined', 'bob joins');
is(numsub("collab:s:$sid", 2), 2, 'both instances relay the session');
flows($bob, $slug, 'b -> a', $ann);
flows($ann, $slug, 'a -> b', $bob);


# --- revoke across instances ------------------------------------------------

$r = $ann->req(op => 'invite', session => $slug, user => 'carl');
my $cinv = $r->{invitation}{id};
is(scalar(all_events($carl, 'invitation')), 1, 'carl on b is invited');
is($ann->req(op => 'revoke', invitation => $cinv)->{op}, 'revoked',
   'ann revokes it');
@ev = all_events($carl, 'invitation_revoked');
is_deeply(\@ev, [{ op => 'invitation_revoked', invitation => $cinv,
                   session => $slug }],
          'carl on b is told at once, once') or diag(explain(\@ev));
is(err_code($carl->req(op => 'accept', invitation => $cinv)), 'CONFLICT',
   'and cannot accept');


# --- remove: the removed user's connection on b leaves ----------------------

$r = $ann->req(op => 'invite', session => $slug, user => 'dan');
is(scalar(all_events($dan, 'invitation')), 1, 'dan on b is invited');
is($dan->req(op => 'accept', invitation => $r->{invitation}{id})->{op},
   'accepted', 'dan accepts');
is($dan->req(op => 'join', session => $slug)->{op}, 'joined', 'dan joins');
all_events($_, 'member', 0.3) for $ann, $bob;
flows($ann, $slug, 'before the removal', $bob, $dan);

$r = $ann->req(op => 'remove', session => $slug, user => 'dan');
is($r->{op}, 'removed', 'ann removes dan');
for my $c ($ann, $bob) {
    @ev = all_events($c, 'member');
    is_deeply(\@ev, [{ op => 'member', session => $slug, user => 'dan',
                       action => 'removed' }],
              $c->user . ' is told once') or diag(explain(\@ev));
}
flows($ann, $slug, 'after the removal', $bob);
ok(!$dan->take(sub { $_->{op} eq 'message' }, 0.7),
   "dan's connection on b gets no more messages");
is(err_code($dan->req(op => 'send', session => $slug, body => 'x',
                      clientMsgId => 'd1')),
   'ACCESS_DENIED', 'dan sends from b: ACCESS_DENIED');
is(err_code($dan->req(op => 'join', session => $slug)), 'ACCESS_DENIED',
   'dan rejoins from b: ACCESS_DENIED');
is(rows(q{SELECT count(*) FROM chat_messages WHERE session_id = ?
          AND user_id = (SELECT id FROM users WHERE external_id = 'dan')},
        $sid), 0, 'nothing of dan is stored');


# --- update and delete reach b ----------------------------------------------

is($ann->req(op => 'update', session => $slug, title => 'Relay 2')->{op},
   'updated', 'ann renames the session');
@ev = all_events($bob, 'session');
is(scalar @ev, 1, 'bob on b gets the session event once');
is($ev[0] && $ev[0]{changes}{title}, 'Relay 2', 'with the new title');

is($ann->req(op => 'delete', session => $slug)->{op}, 'deleted',
   'ann deletes the session');
@ev = all_events($bob, 'deleted');
is_deeply(\@ev, [{ op => 'deleted', session => $slug }],
          'bob on b is told once') or diag(explain(\@ev));
is(err_code($bob->req(op => 'send', session => $slug, body => 'x',
                      clientMsgId => 'b1')),
   'ACCESS_DENIED', 'bob on b has left it: send -> ACCESS_DENIED');
is(rows('SELECT count(*) FROM chat_sessions WHERE id = ?', $sid), 0,
   'the session is gone');

$_->close for $ann, $bob, $bob_a, $carl, $dan;
$dbh->disconnect;

done_testing();
