#!/usr/bin/perl
#
# 044-presence-mass-join.t: 500 users joining one session at once (a mass
# reconnect) must not cause an event storm (issue 4): each worker sends
# one "presence" diff per collab_presence_batch (100ms) at most, so an
# observer already in the session gets far fewer events than joins.  The
# counts are printed; the observer must see all 500 joins, in fewer than
# 100 events.  nginx with 2 workers.

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
# (The same small client is in every t/04x-presence-*.t, after the one of
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

# a close frame with the code, then the socket is shut
sub ws_close {
    my ($self, $code) = @_;
    $self->{t}->ws_send($self->{s}, opcode => 8,
                        payload => pack('n', $code // 1000));
    $self->close;
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

# waits until every one of @$users appeared in $list of some presence
# event; returns {user => item} of those seen
sub wait_all {
    my ($self, $list, $users, $timeout) = @_;
    my %got;
    my $end = time + ($timeout // 10);
    while (grep { !$got{$_} } @$users) {
        my $ev = $self->take(sub {
            return 0 unless is_presence($_);
            my %i = items($_, $list);
            grep { $i{$_} } @$users;
        }, $end - time) or last;
        my %i = items($ev, $list);
        $got{$_} //= $i{$_} for grep { $i{$_} } @$users;
    }
    return \%got;
}

# every presence event of the inbox mentioning $user: [list, item] pairs
sub presence_about {
    my ($self, $user) = @_;
    my @r;
    for my $ev (grep { is_presence($_) } @{ $self->{inbox} }) {
        for my $list (qw(joins leaves updates)) {
            my %i = items($ev, $list);
            push @r, [$list, $i{$user}] if $i{$user};
        }
    }
    return @r;
}

sub wait_typing {
    my ($self, $user, $on, $timeout) = @_;
    return $self->take(sub {
        ($_->{op} // '') eq 'typing' && ($_->{user} // '') eq $user
            && !!$_->{on} == !!$on
    }, $timeout // 10);
}

# the worker process holding this connection: the server side socket is
# the one whose peer is our local port; its inode is among the worker's
# descriptors
sub worker {
    my ($self, @pids) = @_;
    my $lport = $self->{s}->sockport;
    my $inode;
    for my $f ('/proc/net/tcp', '/proc/net/tcp6') {
        CORE::open(my $fh, '<', $f) or next;
        while (my $line = <$fh>) {
            my @x = split ' ', $line;
            next unless @x > 9 && $x[1] =~ /:([0-9A-F]{4})$/;
            next unless hex($1) == $self->{port};
            next unless $x[2] =~ /:([0-9A-F]{4})$/ && hex($1) == $lport;
            $inode = $x[9];
        }
    }
    return undef unless $inode;
    for my $pid (@pids) {
        for my $fd (glob "/proc/$pid/fd/*") {
            my $l = readlink($fd) // next;
            return $pid if $l eq "socket:[$inode]";
        }
    }
    return undef;
}

}

my $N = 500;

my $t = Collab::Test->new;
$t->start_pg;

$t->start_nginx(<<'CONF', worker_processes => 2);
    collab_postgres "%%PG_DSN%%" pool=8;
    collab_zone collab 8m;
    collab_presence_batch 100ms;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /chat {
            collab_websocket;
            collab_user $arg_user;
            collab_user_name $arg_name;
        }
    }
CONF

sub open_user { Chat->open($t, user => $_[0], name => $_[0]) }

my $obs = open_user('observer');
my $r = $obs->req(op => 'create', title => 'crowd', isPublic => \1);
my $slug = $r->{session}{id};
ok($slug, 'session created') or BAIL_OUT('no session');
is($obs->join_session($slug)->{op}, 'joined', 'observer joined');

# connected (and their user rows made) first, then all joins at once
my @c = map { open_user("m$_") } 1 .. $N;
is($_->req(op => 'ping')->{op}, 'pong', 'ready') for $c[0], $c[-1];
Chat::settle(1, $obs, @c);
$obs->grab(sub { 1 });

my $t0 = time;
$_->send({ op => 'join', session => $slug, ref => 'j' }) for @c;

my %seen;
my ($events, $joined) = (0, 0);
my $end = time + 60;
while (time < $end && (keys(%seen) < $N || $joined < $N)) {
    Chat::pump(0.1, $obs, @c);
    for my $ev ($obs->grab(\&Chat::is_presence)) {
        $events++;
        $seen{ $_->{user} }++ for @{ $ev->{joins} };
    }
    for my $x (@c) {
        $joined += grep { ($_->{ref} // '') eq 'j' && $_->{op} eq 'joined' }
                   $x->grab(sub { ($_->{ref} // '') eq 'j' });
        $x->{inbox} = [];
    }
}
my $secs = time - $t0;
# a last batch or two
Chat::settle(0.5, $obs);
for my $ev ($obs->grab(\&Chat::is_presence)) {
    $events++;
    $seen{ $_->{user} }++ for @{ $ev->{joins} };
}

my $users = grep { /^m\d+$/ } keys %seen;
diag(sprintf '%d joins in %.1fs reached the observer in %d presence '
     . 'events', $users, $secs, $events);
is($joined, $N, "$N joined replies");
is($users, $N, "the observer saw all $N users join");
is(scalar(grep { $seen{$_} > 1 } keys %seen), 0, 'each of them once');
ok($events < 100, "in $events events: coalesced (< 100, for $N joins)");
ok($events >= 1, 'in at least one');

my $late = open_user('late');
my $j = $late->join_session($slug);
is(scalar @{ $j->{presence} // [] }, $N + 2,
   'a newcomer\'s snapshot has all ' . ($N + 2));

done_testing();
