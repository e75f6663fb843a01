#!/usr/bin/perl
#
# 070-browser.t: the demo page (conf/www) and the TypeScript client in a
# real browser (issue 7).
#
# PostgreSQL and nginx as make run configures them (collab_zone,
# collab_postgres, the conf/www root, the /collab/ws location with the
# demo identity from ?user=&name=), a short presence grace; then
# client/browser-test/chat.mjs drives Debian's chromium through
# playwright-core with two pages as two users: Ann creates a private
# session and invites "bob" by name, the invitation appears on Bob's page
# live, the session refuses him until he accepts (the invitation is still
# listed after a reload), he accepts and joins and Ann sees "Bob ...
# joined", messages go both ways, "Ann is
# typing…" appears and goes, nginx is stopped and started again (the page
# reconnects by itself and the messages queued meanwhile appear exactly
# once, also in the database), an "@ai" question's reply (from the mock
# provider, t/lib/Collab/MockAI.pm) streams into both pages and becomes an
# "Assistant" message, Cancel stops a long one, the owner turns the
# assistant off; Ann makes a public image-to-image session, Bob opens its
# link, Ann attaches a picture to "@ai make it blue" and both pages show
# her picture and the assistant's edit; and Bob closing his page shows
# him offline to Ann.  Screenshots go to build/test-output/070-browser/
# (or $TEST_OUTPUT_DIR/070-browser/); the path is printed.
#
# Why: the client's reconnect, resume and queue logic is unit-tested
# against a fake socket; this checks the whole chain a user touches.
# Without chromium or playwright-core (make client) the test fails: it
# never passes without having run the browser.

use strict;
use warnings;
use utf8;

use FindBin;
use lib "$FindBin::Bin/lib";

use File::Path qw(make_path);
use IO::Handle;
use IO::Select;
use IPC::Open2 qw(open2);
use POSIX qw(WNOHANG);
use Test::More;
use Time::HiRes qw(time);
use Collab::Test;
use Collab::MockAI;

my $REPO = Collab::Test->repo;
my $CHROMIUM = $ENV{CHROMIUM} || '/usr/bin/chromium';
my $SCRIPT = "$REPO/client/browser-test/chat.mjs";

my $node = `sh -c 'command -v node'`;
chomp $node;
ok($node ne '', 'node is installed') or BAIL_OUT('no node (make deps)');
ok(-x $CHROMIUM, "$CHROMIUM exists (apt-get install chromium)");
ok(-d "$REPO/client/node_modules/playwright-core",
   'client/node_modules/playwright-core exists (make client)');
ok(-f "$REPO/conf/www/collab-client.js",
   'conf/www/collab-client.js exists (make client)');

my $t = Collab::Test->new;
$t->start_pg;

# the AI participant's provider: a mock, with a key file
my $mock = Collab::MockAI->start(dir => $t->dir);
open my $kfh, '>', $t->dir . '/ai.key' or die $!;
print $kfh "sk-mock-070\n";
close $kfh;
my $ai_endpoint = $mock->endpoint;

my $conf = <<"EOF";
    include       /etc/nginx/mime.types;
    default_type  application/octet-stream;

    collab_postgres        "%%PG_DSN%%" pool=4;
    collab_zone            collab 4m;
    collab_presence_grace  1s;
    collab_ai_endpoint     $ai_endpoint;
    collab_ai_key_file     %%TESTDIR%%/ai.key;
    collab_ai_model        mock/model-1;
    collab_ai_timeout      20s;

    server {
        listen  127.0.0.1:%%PORT%%;
        root    $REPO/conf/www;

        location = /collab/ws {
            collab_websocket;
            collab_user       \$arg_user;
            collab_user_name  \$arg_name;
        }

        location / {
            index  index.html;
        }
    }
EOF

$t->start_nginx($conf);

my $out_dir = ($ENV{TEST_OUTPUT_DIR} || "$REPO/build/test-output")
    . '/070-browser';
make_path($out_dir);
unlink glob("$out_dir/*.png");

my $url = 'http://127.0.0.1:' . $t->port . '/';

# the scenario, line by line (see the script's header)
my ($from, $to);
my $pid = open2($from, $to, $node, $SCRIPT, $url, $out_dir);
$to->autoflush(1);

my $sel = IO::Select->new($from);
my $deadline = time + 150;
my ($ended, $screenshot, $n_ok) = (0, undef, 0);
my $buf = '';

LINE: while (1) {
    my $left = $deadline - time;
    if ($left <= 0) {
        fail('the browser script finished within 150 s');
        last;
    }
    if (index($buf, "\n") < 0) {
        next LINE unless $sel->can_read($left > 1 ? 1 : $left);
        my $n = sysread($from, $buf, 65536, length $buf);
        last unless $n;
        next LINE if index($buf, "\n") < 0;
    }
    (my $line, $buf) = split /\n/, $buf, 2;
    $buf //= '';

    if ($line =~ /^ok (.*)/) {
        pass($1);
        $n_ok++;
    } elsif ($line =~ /^not ok (.*)/) {
        fail($1);
    } elsif ($line =~ /^diag (.*)/) {
        diag($1);
    } elsif ($line =~ /^screenshot (.*)/) {
        $screenshot = $1;
    } elsif ($line eq 'cmd stop-nginx') {
        $t->stop_nginx;
        print $to "done\n";
    } elsif ($line eq 'cmd start-nginx') {
        my $r = eval { $t->start_nginx($conf); 'done' } // "failed: $@";
        $r =~ s/\n/ /g;
        print $to "$r\n";
    } elsif ($line eq 'end') {
        $ended = 1;
    } else {
        diag("browser: $line");
    }
}

close $to;
my $end = time + 10;
while (waitpid($pid, WNOHANG) == 0) {
    if (time > $end) {
        kill 'TERM', $pid;
        waitpid($pid, 0);
        last;
    }
    select(undef, undef, undef, 0.1);
}
my $rc = $? >> 8;

ok($ended, 'the browser script ran to its end');
is($rc, 0, 'the browser script exited 0');
cmp_ok($n_ok, '>=', 30, 'the browser script passed its checks');

ok($screenshot && -s $screenshot, 'a screenshot of the chat was saved');
diag("screenshot: $screenshot") if $screenshot && -s $screenshot;

# the database agrees: each message stored once, by the right users
my $dbh = $t->pg_dbh;
my $rows = $dbh->selectall_arrayref(<<'SQL');
SELECT m.body, u.external_id, count(*)
  FROM chat_messages m JOIN users u ON u.id = m.user_id
  JOIN chat_sessions s ON s.id = m.session_id
 WHERE s.title = 'Launch plan'
 GROUP BY m.body, u.external_id
 ORDER BY min(m.seq)
SQL
is_deeply($rows, [
    ['Hello from Bob', 'bob', 1],
    ['Hi Bob, Ann here', 'ann', 1],
    ['Sent while nginx was down (1)', 'ann', 1],
    ['Sent while nginx was down (2)', 'ann', 1],
    ['@ai when do we ship?', 'ann', 1],
    ['@ai [long] tell me everything', 'ann', 1],
    ['@ai are you there?', 'bob', 1],
], 'chat_messages holds each message once') or diag(explain($rows));

# the session is private, and Bob is in it by an accepted invitation
$rows = $dbh->selectall_arrayref(<<'SQL');
SELECT s.title, s.is_public, u.external_id, b.external_id, i.status
  FROM chat_invitations i
  JOIN chat_sessions s ON s.id = i.session_id
  JOIN users u ON u.id = i.invited_user_id
  JOIN users b ON b.id = i.invited_by
SQL
is_deeply($rows, [['Launch plan', 0, 'bob', 'ann', 'accepted']],
          'one invitation, from ann to bob, accepted; the session private')
    or diag(explain($rows));

# the assistant answered twice: once whole, once cancelled
$rows = $dbh->selectall_arrayref(<<'SQL');
SELECT m.kind, m.user_id IS NULL, m.metadata->>'cancelled'
  FROM chat_messages m JOIN chat_sessions s ON s.id = m.session_id
 WHERE m.kind = 'ai' AND s.title = 'Launch plan' ORDER BY m.seq
SQL
is_deeply($rows, [['ai', 1, undef], ['ai', 1, 'true']],
          'two ai messages stored, the second cancelled')
    or diag(explain($rows));

# the picture session: Ann's message with her picture, then the edit
$rows = $dbh->selectall_arrayref(<<'SQL');
SELECT m.kind, m.body, left(m.metadata->>'image', 22)
  FROM chat_messages m JOIN chat_sessions s ON s.id = m.session_id
 WHERE s.title = 'Pictures' AND s.type = 'image-to-image' ORDER BY m.seq
SQL
is_deeply($rows, [['user', '@ai make it blue', 'data:image/png;base64,'],
                  ['ai', 'revised: make it blue', 'data:image/png;base64,']],
          'the picture session holds the picture and its edit')
    or diag(explain($rows));
$dbh->disconnect;
$mock->stop;

done_testing();
