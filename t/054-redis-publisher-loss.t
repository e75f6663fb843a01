#!/usr/bin/perl
#
# 054-redis-publisher-loss.t: a message whose PUBLISH was lost still
# reaches the other workers when nothing is sent after it (issue 5:
# "every connection has every acked message exactly once"; DESIGN.md
# invariant 2, "Nothing acknowledged is lost").
#
# One nginx, 2 workers X and Y, a member on each.  Redis stays up and the
# subscribers stay connected, but the workers' publisher connections are
# killed (CLIENT KILL) while Redis refuses new clients (CONFIG SET
# maxclients 1, the test keeping the one admin connection): a message
# sent on Y now is stored and acked but cannot be published.  Then Redis
# accepts clients again and the publishers reconnect, and nothing more is
# sent.  X's member must still get the message (from a resync, a
# re-publish, anything).  Then one more message from Y must reach X after
# the first, in order (the gap healing).  Last, the same loss again, but
# Y's member leaves the session before the publishers are back, so that
# worker Y has no room of it left: X must still get that message.
#
# Why: the same happens on any hiccup of one publisher connection (a
# network blip, Redis dropping a client), or when a worker's publisher
# reconnects after its own subscriber following a Redis restart; the
# receivers' gap healing needs a later event, which a quiet session may
# never get.

use strict;
use warnings;
use utf8;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use Collab::Test;
use Collab::Chat;
use Collab::RedisTiny;

my $t = Collab::Test->new;
$t->start_pg;
$t->start_redis;
my $rport = $t->redis_port;

$t->start_nginx(<<'CONF', worker_processes => 2);
    collab_postgres "%%PG_DSN%%" pool=2 timeout=30s;
    collab_redis 127.0.0.1:%%REDIS_PORT%%;

    server {
        listen 127.0.0.1:%%PORT%% reuseport;

        location = /pid {
            return 200 $pid;
        }

        location /chat {
            collab_websocket;
            collab_user $http_x_user_id;
        }
    }
CONF

my @w = $t->nginx_worker_pids;
is(scalar @w, 2, 'two workers');

my $n = 0;
sub on_worker {
    my ($pid) = @_;
    for (1 .. 200) {
        my $c = Collab::Chat->open_on_worker($t, port => $t->port,
                                             user => 'u' . $n++,
                                             nontext => 'drop');
        return $c if $c->pid == $pid;
        $c->close;
    }
    die "no connection reached worker $pid\n";
}

my ($x, $y) = (on_worker($w[0]), on_worker($w[1]));
my $slug = $x->req(op => 'create', title => 'quiet',
                   isPublic => \1)->{session}{id};
is($_->req(op => 'join', session => $slug)->{op}, 'joined',
   $_->user . ' joined on worker ' . $_->pid) for $x, $y;

# the admin connection stays open through "maxclients 1"
my $admin = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $rport,
                                  Proto => 'tcp', Timeout => 5)
    or die "redis: $!";
binmode $admin;

sub admin {
    my (@args) = @_;
    print $admin '*' . @args . "\r\n"
        . join('', map { '$' . length($_) . "\r\n$_\r\n" } @args);
    return Collab::RedisTiny::reply($admin);
}

admin('CLIENT', 'SETNAME', 'admin');

# nginx's connections that are not subscribed: the publishers
sub publishers {
    return grep { !/ name=admin / && / sub=0 / && / psub=0 / }
           split /\n/, admin('CLIENT', 'LIST');
}

sub wait_publishers {
    my ($want) = @_;
    my $end = time + 15;
    my @p;
    while (1) {
        @p = publishers();
        return scalar @p if @p == $want || time > $end;
        sleep 0.05;
    }
}

is($y->req(op => 'send', session => $slug, body => 'one',
           clientMsgId => 'm1')->{op}, 'ack', 'y sends m1');
my $e = $x->take(sub { $_->{op} eq 'message' }, 10);
is($e && $e->{seq}, 1, 'x gets m1 through Redis');
is(wait_publishers(2), 2, 'two publisher connections');

is(admin('CONFIG', 'SET', 'maxclients', 1), 'OK', 'Redis refuses clients');
for my $p (publishers()) {
    my ($id) = $p =~ /\bid=(\d+)/;
    admin('CLIENT', 'KILL', 'ID', $id);
}
is(wait_publishers(0), 0, 'the publishers are gone');

is($y->req(op => 'send', session => $slug, body => 'two',
           clientMsgId => 'm2')->{op}, 'ack', 'y sends m2: stored, acked');
my $ey = $y->take(sub { $_->{op} eq 'message' && $_->{seq} == 2 }, 10);
ok($ey, "y's own worker delivers m2");

is(admin('CONFIG', 'SET', 'maxclients', 10000), 'OK',
   'Redis accepts clients again');
is(wait_publishers(2), 2, 'the publishers are back');

# nothing more is sent: m2 must reach x anyway
$e = $x->take(sub { $_->{op} eq 'message' }, 10);
is($e && $e->{seq}, 2, 'x gets m2 with nothing sent after it')
    or diag('x got ' . ($e ? "seq $e->{seq}" : 'nothing') . ' in 10 s');

# a later message shows x the gap at the latest
is($y->req(op => 'send', session => $slug, body => 'three',
           clientMsgId => 'm3')->{op}, 'ack', 'y sends m3');
my @seqs = map { $_->{seq} } grep { $_ }
           map { $x->take(sub { $_->{op} eq 'message' }, 10) }
           1 .. ($e && $e->{seq} == 2 ? 1 : 2);
unshift @seqs, 2 if $e && $e->{seq} == 2;
is("@seqs", '2 3', 'x has m2 then m3');

# again, but y leaves before the publishers are back: worker Y has no
# room of the session any more when its publisher returns, and its hint
# must still come (it remembers the session, not only its rooms)
is(admin('CONFIG', 'SET', 'maxclients', 1), 'OK', 'Redis refuses clients');
for my $p (publishers()) {
    my ($id) = $p =~ /\bid=(\d+)/;
    admin('CLIENT', 'KILL', 'ID', $id);
}
is(wait_publishers(0), 0, 'the publishers are gone again');

is($y->req(op => 'send', session => $slug, body => 'four',
           clientMsgId => 'm4')->{op}, 'ack', 'y sends m4: stored, acked');
is($y->req(op => 'leave', session => $slug)->{op}, 'left',
   'y leaves: its worker has no room of the session');

is(admin('CONFIG', 'SET', 'maxclients', 10000), 'OK',
   'Redis accepts clients again');
is(wait_publishers(2), 2, 'the publishers are back');

$e = $x->take(sub { $_->{op} eq 'message' }, 10);
is($e && $e->{seq}, 4, 'x gets m4, its sender gone from the session')
    or diag('x got ' . ($e ? "seq $e->{seq}" : 'nothing') . ' in 10 s');

$x->close;
$y->close;
close $admin;

done_testing();
