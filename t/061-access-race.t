#!/usr/bin/perl
#
# 061-access-race.t: maxParticipants holds when many accept or join at
# the same moment (issue 6: "up to maxParticipants (-> CONFLICT when
# full)").
#
# 2 workers (reuseport) with 4 PostgreSQL connections each, so that the
# statements really run side by side.  Each round: a session that has
# room for exactly one more participant; 8 invitees send "accept" at once
# (or 8 strangers "join" a public one at once).  Exactly one may get in,
# the 7 others get CONFLICT, and the table must hold the limit, never
# more.  Several rounds, as a race shows only sometimes.
#
# Why: the room check is a count(*) in the same statement as the INSERT;
# under READ COMMITTED two statements can both count N-1 and both insert,
# unless the session row is locked first.

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


}

my $t = Collab::Test->new;
$t->start_pg;

$t->start_nginx(<<'CONF', worker_processes => 2);
    collab_postgres "%%PG_DSN%%" pool=4 timeout=10s;
    collab_batch_window 2ms;

    server {
        listen 127.0.0.1:%%PORT%% reuseport;

        location /chat {
            collab_websocket;
            collab_user $http_x_user_id;
        }
    }
CONF

my $dbh = $t->pg_dbh;

sub rows { $dbh->selectrow_array($_[0], undef, @_[1 .. $#_]) }

my $N = 8;
my $ROUNDS = 10;

my $owner = Chat->open($t, user => 'owner');
my @c = map { Chat->open($t, user => "u$_") } 1 .. $N;
for my $c ($owner, @c) {
    is($c->req(op => 'invitations')->{op}, 'invitations',
       $c->user . ' is connected');
}

# every client sends its request at once; returns the replies' ops/codes
sub all_at_once {
    my (@reqs) = @_;        # [client, {request}] ...
    my $i = 0;
    for my $x (@reqs) {
        $x->[1]{ref} = 'race' . ++$i;
        $x->[0]->send($x->[1]);
    }
    my @out;
    for my $x (@reqs) {
        my $ref = $x->[1]{ref};
        my $r = $x->[0]->take(sub { ($_->{ref} // '') eq $ref }, 15)
            // { op => '(no reply)' };
        push @out, $r->{op} eq 'error' ? $r->{code} : $r->{op};
    }
    return @out;
}

my (@acc_over, @join_over, @acc_bad, @join_bad);

for my $round (1 .. $ROUNDS) {

    # private, room for the owner and one more
    my $r = $owner->req(op => 'create', title => "acc $round",
                        maxParticipants => 2);
    my $slug = $r->{session}{id};
    my @inv;
    for my $c (@c) {
        $r = $owner->req(op => 'invite', session => $slug, user => $c->user);
        push @inv, $r->{invitation}{id};
    }
    my @got = all_at_once(map { [$c[$_], { op => 'accept',
                                           invitation => $inv[$_] }] }
                          0 .. $N - 1);
    my $n = rows(q{SELECT count(*) FROM chat_participants p
                   JOIN chat_sessions s ON s.id = p.session_id
                   WHERE s.slug = ?}, $slug);
    my $accepted = grep { $_ eq 'accepted' } @got;
    my $conflict = grep { $_ eq 'CONFLICT' } @got;
    push @acc_over, "round $round: $n participants, $accepted accepted"
        if $n > 2;
    push @acc_bad, "round $round: @got"
        unless $accepted == 1 && $conflict == $N - 1;

    # public, room for the owner and one more
    $r = $owner->req(op => 'create', title => "join $round", isPublic => \1,
                     maxParticipants => 2);
    $slug = $r->{session}{id};
    @got = all_at_once(map { [$_, { op => 'join', session => $slug }] } @c);
    $n = rows(q{SELECT count(*) FROM chat_participants p
                JOIN chat_sessions s ON s.id = p.session_id
                WHERE s.slug = ?}, $slug);
    my $joined = grep { $_ eq 'joined' } @got;
    $conflict = grep { $_ eq 'CONFLICT' } @got;
    push @join_over, "round $round: $n participants, $joined joined"
        if $n > 2;
    push @join_bad, "round $round: @got"
        unless $joined == 1 && $conflict == $N - 1;
}

is_deeply(\@acc_over, [],
          "$N accepts at once into a session with room for one: never "
          . 'more than maxParticipants participants');
is_deeply(\@acc_bad, [], 'and exactly one accepted, the others CONFLICT');
is_deeply(\@join_over, [],
          "$N joins at once of a public session with room for one: never "
          . 'more than maxParticipants participants');
is_deeply(\@join_bad, [], 'and exactly one joined, the others CONFLICT');

is(rows(q{SELECT count(*) FROM (
              SELECT s.id FROM chat_sessions s
              JOIN chat_participants p ON p.session_id = s.id
              GROUP BY s.id, s.max_participants
              HAVING count(*) > s.max_participants) x}), 0,
   'no session in the table is over its limit');

$_->close for $owner, @c;
$dbh->disconnect;

done_testing();
