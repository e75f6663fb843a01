#!/usr/bin/perl
#
# 033-chat-concurrency.t: many writers, one session, two nginx instances
# sharing one PostgreSQL (issue 3: "seq ... 1, 2, 3 with no gap and no
# duplicate, even with ... several nginx instances writing the same
# session").
#
# 20 senders (10 on each instance, worker_processes 1 each) send 200
# messages each into one session, pipelined, all at once.  Afterwards the
# table's seqs are exactly 1..4000, every sender got 200 acks whose seqs
# increase, each ack's seq is the row of its clientMsgId, and a reader on
# each instance saw every message sent through that instance, in
# increasing seq order (delivery is same-worker until the Redis relay).
# Then the same user sends the same clientMsgIds from both instances at
# once: one row each (the unique-violation retry path across hosts).

use strict;
use warnings;
use utf8;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use Collab::Test;
use Collab::Chat;

my $t = Collab::Test->new;
$t->start_pg;

my $conf = <<'CONF';
    collab_postgres "%%PG_DSN%%" pool=4 timeout=30s;
    collab_batch_window 2ms;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /chat {
            collab_websocket;
            collab_user $http_x_user_id;
            collab_user_name $http_x_user_name;
            collab_send_queue_size 16m;
        }
    }
CONF

(my $conf_b = $conf) =~ s/%%PORT%%/%%PORT2%%/;
$t->start_nginx($conf, name => 'a');
$t->start_nginx($conf_b, name => 'b');
my @ports = ($t->port(1), $t->port(2));

my $dbh = $t->pg_dbh;

sub rows { $dbh->selectrow_array($_[0], undef, @_[1 .. $#_]) }

my $owner = Collab::Chat->open($t, user => 'owner', port => $ports[0]);
my $r = $owner->req(op => 'create', title => 'crowd', isPublic => \1);
my $slug = $r->{session}{id};
my $sid = rows('SELECT id FROM chat_sessions WHERE slug = ?', $slug);
ok($sid, 'session created');

my $SENDERS = 20;
my $PER = 200;
my $WINDOW = 64;

my (@senders, @readers);
for my $i (0 .. $SENDERS - 1) {
    my $c = Collab::Chat->open($t, user => "s$i", port => $ports[$i % 2]);
    $c->{inst} = $i % 2;
    push @senders, $c;
}
for my $i (0, 1) {
    my $c = Collab::Chat->open($t, user => "reader$i", port => $ports[$i]);
    $c->{inst} = $i;
    push @readers, $c;
}
for my $c (@senders, @readers) {
    $c->send({ op => 'join', session => $slug, ref => 'join' });
}
my $joined = 0;
for my $c (@senders, @readers) {
    my $j = $c->take(sub { ($_->{ref} // '') eq 'join' }, 30);
    $joined++ if $j && $j->{op} eq 'joined';
}
is($joined, $SENDERS + 2, 'all senders and readers joined');

# every sender sends at once, each keeping up to $WINDOW unacked
my (%sent, %acks, %errors, %reader_seqs);
my $end = time + 120;
my $done = 0;

while ($done < $SENDERS && time < $end) {
    for my $c (@senders) {
        my $u = $c->user;
        my $n = $sent{$u} // 0;
        my $a = scalar @{ $acks{$u} // [] } + ($errors{$u} // 0);
        while ($n < $PER && $n - $a < $WINDOW) {
            $n++;
            $c->send({ op => 'send', session => $slug,
                       body => "$u says $n", clientMsgId => "$u-$n",
                       ref => $n });
        }
        $sent{$u} = $n;
    }
    Collab::Chat::pump(0.05, @senders, @readers);
    $done = 0;
    for my $c (@senders) {
        my $u = $c->user;
        for my $m (@{ $c->{inbox} }) {
            if ($m->{op} eq 'ack') {
                push @{ $acks{$u} }, $m;
            } elsif ($m->{op} eq 'error') {
                $errors{$u}++;
                diag("$u: error $m->{code} ref $m->{ref}")
                    if $errors{$u} < 3;
            }
        }
        @{ $c->{inbox} } = ();
        $done++ if @{ $acks{$u} // [] } + ($errors{$u} // 0) >= $PER;
    }
    for my $c (@readers) {
        push @{ $reader_seqs{ $c->{inst} } },
            map { $_->{seq} } grep { $_->{op} eq 'message' }
            @{ $c->{inbox} };
        @{ $c->{inbox} } = ();
    }
}

is($done, $SENDERS, 'every sender finished');
is(scalar(keys %errors), 0, 'no error to any send');

my (%ack_seq, $increasing, $all_200);
$increasing = $all_200 = 0;
for my $c (@senders) {
    my $u = $c->user;
    my @a = @{ $acks{$u} // [] };
    $all_200++ if @a == $PER
                  && join(',', map { $_->{ref} } @a) eq join(',', 1 .. $PER);
    my $ok = 1;
    for my $k (1 .. $#a) {
        $ok = 0 unless $a[$k]{seq} > $a[$k - 1]{seq};
    }
    $increasing++ if $ok && @a;
    $ack_seq{ $_->{clientMsgId} } = $_->{seq} for @a;
    $ok = !grep { $_->{duplicate} } @a;
    ok($ok, "$u: no ack is a duplicate") unless $ok;
}
is($all_200, $SENDERS, "every sender got $PER acks, in the order sent");
is($increasing, $SENDERS, "every sender's ack seqs increase");

my $total = $SENDERS * $PER;
my $seqs = $dbh->selectcol_arrayref(
    'SELECT seq FROM chat_messages WHERE session_id = ? ORDER BY seq',
    undef, $sid);
is(scalar @$seqs, $total, "$total rows");
is_deeply($seqs, [1 .. $total], "seqs in the table are exactly 1..$total");
is(rows('SELECT last_seq FROM chat_sessions WHERE id = ?', $sid), $total,
   'last_seq matches');

my %row_seq = map { $_->[0] => $_->[1] } @{ $dbh->selectall_arrayref(
    'SELECT client_msg_id, seq FROM chat_messages WHERE session_id = ?',
    undef, $sid) };
is(scalar(grep { ($row_seq{$_} // -1) != $ack_seq{$_} } keys %ack_seq), 0,
   "every ack's seq is the row of its clientMsgId");
is(scalar(keys %ack_seq), $total, 'all distinct clientMsgIds acked');

is(rows(q{SELECT count(*) FROM chat_messages m JOIN users u
          ON u.id = m.user_id WHERE m.session_id = ?
          AND m.body <> u.external_id || ' says ' ||
              split_part(m.client_msg_id, '-', 2)}, $sid), 0,
   'every row has its own body and author');

# the readers: their instance's messages, increasing, none missing.  (A
# reader may get the other instance's messages too: its worker fills the
# gaps they leave in its seqs from PostgreSQL.  So wait for the last seq.)
$end = time + 20;
while (time < $end) {
    my $done = 1;
    for my $i (0, 1) {
        my $seqs = $reader_seqs{$i} // [];
        $done = 0 unless @$seqs && $seqs->[-1] >= $total;
    }
    last if $done;
    Collab::Chat::pump(0.2, @readers) or next;
    for my $c (@readers) {
        push @{ $reader_seqs{ $c->{inst} } },
            map { $_->{seq} } grep { $_->{op} eq 'message' }
            @{ $c->{inbox} };
        @{ $c->{inbox} } = ();
    }
}
for my $i (0, 1) {
    my @got = @{ $reader_seqs{$i} // [] };
    my %mine;
    for my $c (grep { $_->{inst} == $i } @senders) {
        $mine{ $_->{seq} } = 1 for @{ $acks{ $c->user } // [] };
    }
    my $incr = !grep { $got[$_] <= $got[$_ - 1] } 1 .. $#got;
    ok($incr, "reader on instance $i: events in increasing seq order");
    my %got = map { $_ => 1 } @got;
    my @missed = grep { !$got{$_} } sort { $a <=> $b } keys %mine;
    is(scalar @missed, 0, "reader on instance $i: got every message sent"
       . ' through its instance (' . scalar(@got) . ' events)')
        or diag("missed seqs @missed[0 .. 9]");
}


# --- the same clientMsgId from both instances at once -----------------------

my $ta = Collab::Chat->open($t, user => 'twin', port => $ports[0]);
my $tb = Collab::Chat->open($t, user => 'twin', port => $ports[1]);
for my $c ($ta, $tb) {
    is($c->req(op => 'join', session => $slug)->{op}, 'joined',
       'twin joins on instance ' . ($c == $ta ? 'a' : 'b'));
}
my $K = 50;
for my $k (1 .. $K) {
    for my $c ($ta, $tb) {
        $c->send({ op => 'send', session => $slug, body => "twin $k",
                   clientMsgId => "twin-$k", ref => "t$k" });
    }
}
my ($pairs, $one_new) = (0, 0);
for my $k (1 .. $K) {
    my $x = $ta->take(sub { ($_->{ref} // '') eq "t$k" }, 30) // {};
    my $y = $tb->take(sub { ($_->{ref} // '') eq "t$k" }, 30) // {};
    if (($x->{op} // '') eq 'ack' && ($y->{op} // '') eq 'ack'
        && $x->{seq} == $y->{seq})
    {
        $pairs++;
        $one_new++ if !!$x->{duplicate} != !!$y->{duplicate};
    } else {
        diag("twin-$k: " . explain([$x, $y])) if $k - $pairs < 3;
    }
}
is($pairs, $K, "both instances ack each of $K racing copies with one seq");
is($one_new, $K, 'exactly one of each pair is new');
is(rows(q{SELECT count(*) FROM chat_messages WHERE session_id = ?
          AND client_msg_id LIKE 'twin-%'}, $sid), $K, "$K rows");
is(rows('SELECT max(seq) - count(*) FROM chat_messages
         WHERE session_id = ?', $sid), 0, 'still no gap in seq');

for my $c (@senders, @readers, $owner, $ta, $tb) {
    $c->close;
}
$dbh->disconnect;

done_testing();
