#!/usr/bin/perl
#
# 042-presence-kill.t: a worker killed with kill -9 leaves no ghost users
# (issue 4).  nginx with 2 workers (reuseport, so that connections spread);
# each connection's worker is found through /proc (the server socket whose
# peer is the client's port is among that worker's descriptors).  12
# users join one session, observers too; the worker holding the most users
# is killed with SIGKILL while an observer sits on the other one.  That
# observer must see every user of the dead worker leave (offline) within
# collab_presence_timeout (10s here, plus slack), and no other user leave;
# "sessions" must count only the living; a newcomer's snapshot must not
# have the dead ones (the zone holds no entry for them).

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

my $t = Collab::Test->new;
$t->start_pg;

# the master reports the killed worker at [alert]: expected here
$t->allow_log(qr/exited on signal 9/);

$t->start_nginx(<<'CONF', worker_processes => 2);
    collab_postgres "%%PG_DSN%%" pool=4;
    collab_zone collab 8m;
    collab_presence_timeout 10s;
    collab_presence_grace 2s;
    collab_presence_batch 100ms;

    server {
        listen 127.0.0.1:%%PORT%% reuseport;

        location /chat {
            collab_websocket;
            collab_user $arg_user;
            collab_user_name $arg_name;
        }
    }
CONF

my @workers = $t->nginx_worker_pids;
is(scalar @workers, 2, 'two workers');

sub open_user { Chat->open($t, user => $_[0], name => ucfirst $_[0]) }

my $owner = open_user('owner');
my $r = $owner->req(op => 'create', title => 'kill', isPublic => \1);
my $slug = $r->{session}{id};
ok($slug, 'session created') or BAIL_OUT('no session');
is($owner->join_session($slug)->{op}, 'joined', 'owner joined');

my (@users, %on);
for my $i (1 .. 12) {
    my $c = open_user("u$i");
    is($c->join_session($slug)->{op}, 'joined', "u$i joined");
    $c->{pid} = $c->worker(@workers);
    push @users, $c;
    push @{ $on{ $c->{pid} // '?' } }, $c->user;
}
$owner->{pid} = $owner->worker(@workers);
push @{ $on{ $owner->{pid} // '?' } }, 'owner';
note("worker $_: @{ $on{$_} }") for sort keys %on;
ok(!$on{'?'}, 'every connection was found on a worker');

# the victim: the worker with the most users; an observer on the other
my ($victim) = sort { @{ $on{$b} // [] } <=> @{ $on{$a} // [] } } @workers;
my ($survivor) = grep { $_ != $victim } @workers;
my $obs;
for my $i (1 .. 50) {
    my $c = open_user("obs$i");
    next unless ($c->worker(@workers) // 0) == $survivor;
    $obs = $c;
    last;
}
ok($obs, "an observer on the surviving worker $survivor")
    or BAIL_OUT('no observer on the other worker');
is($obs->join_session($slug)->{op}, 'joined', 'the observer joined');
my $obs_user = $obs->user;

my @dead = grep { ($_->{pid} // 0) == $victim } @users, $owner;
my @live = grep { ($_->{pid} // 0) != $victim } @users, $owner;
my @dead_names = map { $_->user } @dead;
my @live_names = map { $_->user } @live;
note("to die: @dead_names; to live: @live_names");
ok(@dead >= 1, scalar(@dead) . ' users on the victim');

my $active = sub {
    my $r = $obs->req(op => 'sessions');
    my ($s) = grep { $_->{id} eq $slug } @{ $r->{sessions} // [] };
    return $s ? $s->{activeUsers} : -1;
};

is($active->(), 14, 'activeUsers 14 before (owner, 12 users, observer)');
Chat::settle(1, $obs);
$obs->grab(\&Chat::is_presence);

kill 'KILL', $victim;
my $t0 = time;

my $gone = $obs->wait_all('leaves', \@dead_names, 25);
is_deeply([sort keys %$gone], [sort @dead_names],
          'the observer sees every user of the killed worker leave');
ok(!grep({ ($_->{status} // '') ne 'offline' } values %$gone),
   'each with status offline');
note(sprintf 'the last leave came %.1fs after the kill', time - $t0);

# the dead connections are dead (EOF), the living ones still answer
Chat::settle(0.5, @users, $owner);
is(scalar(grep { $_->{eof} } @dead), scalar @dead,
   "the killed worker's connections are closed");
is(scalar(grep { $_->req(op => 'ping')->{op} eq 'pong' } @live), scalar @live,
   "the other worker's connections still answer");

Chat::settle(1, $obs);
my @wrong = grep { my $u = $_; grep { $_->[0] eq 'leaves' }
                   $obs->presence_about($u) } @live_names;
is_deeply(\@wrong, [], 'no living user left');

is($active->(), 14 - @dead, 'activeUsers counts only the living: '
   . (14 - @dead));

my $late = open_user('late');
my $j = $late->join_session($slug);
my %p = map { $_->{user} => $_ } @{ $j->{presence} // [] };
is_deeply([grep { $p{$_} } @dead_names], [],
          "a newcomer's snapshot has none of the dead");
is_deeply([grep { !$p{$_} } @live_names, $obs_user], [],
          'and all of the living');

# the master started a new worker; it takes part
my $end = time + 10;
sleep 0.1 until grep({ $_ == $victim } $t->nginx_worker_pids) == 0
                && $t->nginx_worker_pids == 2 || time > $end;
is(scalar $t->nginx_worker_pids, 2, 'two workers again');

# a dead user reconnects: back online for the observer
my $back = open_user($dead_names[0]);
is($back->join_session($slug)->{op}, 'joined', "$dead_names[0] back");
ok($obs->wait_presence('joins', $dead_names[0]),
   'the observer sees the join');

done_testing();
