#!/usr/bin/perl
#
# 041-presence-grace.t: what presence does by the clock, and across a
# reload (issue 4), on nginx with 2 workers:
#
#   - typing expires by itself after collab_typing_timeout (1s here): the
#     others get {on: false} though the typer never sent it;
#   - a user who disconnects and reconnects within collab_presence_grace
#     (4s here) causes no leave and no new join (no offline/online
#     flicker); one who stays away goes offline (a "leaves" item with
#     status offline) once the grace has passed, and activeUsers drops;
#   - "nginx -s reload" keeps the zone: the clients get 1012 and
#     reconnect, the observer's new snapshot still has both a user who
#     reconnected and one who did not (still in his grace), the first gets
#     no leave, the second gets his leave when his grace ends.

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

my $GRACE = 4;

my $t = Collab::Test->new;
$t->start_pg;

$t->start_nginx(<<"CONF", worker_processes => 2);
    collab_postgres "%%PG_DSN%%" pool=4;
    collab_zone collab 8m;
    collab_presence_timeout 60s;
    collab_presence_grace ${GRACE}s;
    collab_typing_timeout 1s;
    collab_presence_batch 100ms;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /chat {
            collab_websocket;
            collab_user \$arg_user;
            collab_user_name \$arg_name;
        }
    }
CONF

sub open_user { Chat->open($t, user => $_[0], name => $_[1] // ucfirst $_[0]) }

sub joined {
    my ($c, $slug) = @_;
    my $j = $c->join_session($slug);
    is($j->{op}, 'joined', $c->user . ' joined');
    return { map { $_->{user} => $_ } @{ $j->{presence} // [] } };
}

sub active {
    my ($c, $slug) = @_;
    my $r = $c->req(op => 'sessions');
    my ($s) = grep { $_->{id} eq $slug } @{ $r->{sessions} // [] };
    return $s ? $s->{activeUsers} : undef;
}

my $obs = open_user('obs');
my $r = $obs->req(op => 'create', title => 'grace', isPublic => \1);
my $slug = $r->{session}{id};
ok($slug, 'session created') or BAIL_OUT('no session');
joined($obs, $slug);

# --- typing expires by itself -----------------------------------------------

my $ty = open_user('ty');
joined($ty, $slug);
ok($obs->wait_presence('joins', 'ty'), 'obs sees ty join');

is($ty->quiet(op => 'typing', session => $slug, on => \1), undef,
   'ty types (and never says he stopped)');
ok($obs->wait_typing('ty', 1), 'obs: ty typing');
ok($obs->wait_typing('ty', 0, 15), 'obs: ty not typing, by expiry alone');
my $p = joined(open_user('ty2'), $slug);
ok($p->{ty} && defined $p->{ty}{typing} && !$p->{ty}{typing},
   "a newcomer's snapshot: ty not typing");


# --- reconnect within the grace: nothing --------------------------------------

my $ada = open_user('ada');
joined($ada, $slug);
ok($obs->wait_presence('joins', 'ada'), 'obs sees ada join');
Chat::settle(0.5, $obs);
$obs->grab(\&Chat::is_presence);

$ada->close;                            # abrupt: no close frame
$ada = open_user('ada');
$p = joined($ada, $slug);
is($p->{ada} && $p->{ada}{status}, 'online', 'ada back, online');
Chat::settle($GRACE + 2, $obs, $ada);
is_deeply([map { $_->[0] } $obs->presence_about('ada')], [],
          'reconnected within the grace: no leave, no join for ada');

# same with a closing handshake, and a second time
for my $code (1000, 1001) {
    $ada->ws_close($code);
    sleep 0.3;
    $ada = open_user('ada');
    joined($ada, $slug);
}
Chat::settle($GRACE + 2, $obs, $ada);
is_deeply([map { $_->[0] } $obs->presence_about('ada')], [],
          'closed with 1000 then 1001, back each time: still nothing');

# --- disconnect beyond the grace: offline -------------------------------------

my $before = active($obs, $slug);
ok($before, "activeUsers $before before ada goes");

$obs->grab(sub { 1 });
$ty->close;
$ada->ws_close(1000);
my $t0 = time;
my $gone = $obs->wait_all('leaves', ['ada', 'ty'], $GRACE + 10);
my $item = $gone->{ada};
ok($item, 'ada gone beyond the grace: a leave');
is($item && $item->{status}, 'offline', 'status offline');
ok($item && $item->{lastSeen}, 'with lastSeen');
note(sprintf 'leave seen %.1fs after the close (grace %ds)',
     time - $t0, $GRACE);
ok($gone->{ty}, 'ty gone too');
is(active($obs, $slug), $before - 2, 'activeUsers dropped by 2');
$p = joined(open_user('late'), $slug);
ok(!$p->{ada} && !$p->{ty}, "a newcomer's snapshot has neither");

# --- reload keeps presence ----------------------------------------------------

my $kim = open_user('kim');              # reconnects after the reload
my $leo = open_user('leo');              # does not
joined($kim, $slug);
joined($leo, $slug);
ok($obs->wait_presence('joins', 'leo'), 'obs sees leo');
Chat::settle(0.5, $obs);

my @old = $t->nginx_worker_pids;
$t->reload_nginx(wait => 0);

# the old workers say 1012 to everyone
my $end = time + 20;
Chat::pump(0.2, $obs, $kim, $leo)
    while time < $end && grep { !$_->{eof} } $obs, $kim, $leo;
is($_->{close_code}, 1012, $_->user . ' got 1012') for $obs, $kim, $leo;
my @obs_before = $obs->presence_about('kim');
$leo->close;

$obs = open_user('obs');
$kim = open_user('kim');
$p = joined($obs, $slug);
joined($kim, $slug);
ok($p->{kim}, "obs's new snapshot has kim");
ok($p->{leo}, 'and leo, gone but within his grace: the zone survived');
ok(!grep({ $_->[0] eq 'leaves' } @obs_before), 'no leave of kim before');

$item = $obs->wait_presence('leaves', 'leo', undef, $GRACE + 15);
ok($item, 'leo gets his leave when the grace ends');
Chat::settle(1, $obs, $kim);
is_deeply([grep { $_->[0] ne 'joins' } $obs->presence_about('kim')], [],
          'kim (back within the grace): no leave, no update');
ok(!grep({ $_ == $old[0] || $_ == $old[1] } $t->nginx_worker_pids),
   'the old workers are gone');

done_testing();
