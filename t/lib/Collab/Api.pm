package Collab::Api;

# The HTTP JSON API (collab_api) from a test's side, for t/065-api-*.t.
#
#   my $api = Collab::Api->new($t);
#   my $r = $api->call($user, $method, $path, %o);
#
# One request to /collab/api$path as $user, on a new connection per
# request (max_connections 0): a request the module never finalizes
# cannot take the next one with it.  $user undef: no X-User-Id.
# %o: json => data (sent as application/json), raw => bytes, type =>
# Content-Type (undef: none), name => X-User-Name, port => (default the
# main instance), prefix => (default /collab/api), headers => {...}.
# Returns {status, json (decoded body or undef), body (bytes), type,
# error (Mojo's, if any)}.
#
# Plain functions, exported on request:
#   brief($r)             a response for diagnostics: status and the start
#                         of the body
#   db_snapshot($dbh)     every row of every table the module writes, to
#                         compare before and after a request

use strict;
use warnings;

use Exporter qw(import);
use Mojo::JSON qw(decode_json encode_json);
use Mojo::UserAgent;

our @EXPORT_OK = qw(brief db_snapshot);


sub new {
    my ($class, $t) = @_;
    my $ua = Mojo::UserAgent->new(inactivity_timeout => 15,
                                  request_timeout => 20,
                                  max_connections => 0);
    return bless { t => $t, ua => $ua }, $class;
}


sub call {
    my ($self, $user, $method, $path, %o) = @_;
    my $ua = $self->{ua};
    my %h = %{ $o{headers} // {} };
    if (defined $user) {
        utf8::encode($user) if utf8::is_utf8($user);
        $h{'X-User-Id'} = $user;
    }
    if (defined $o{name}) {
        my $n = $o{name};
        utf8::encode($n) if utf8::is_utf8($n);
        $h{'X-User-Name'} = $n;
    }
    my @body;
    if (exists $o{json}) {
        @body = (encode_json($o{json}));
        $h{'Content-Type'} = 'application/json';
    } elsif (exists $o{raw}) {
        @body = ($o{raw});
    }
    $h{'Content-Type'} = $o{type} if exists $o{type};
    delete $h{'Content-Type'} unless defined $h{'Content-Type'};
    my $url = $self->{t}->url(($o{prefix} // '/collab/api') . $path,
                              $o{port});
    my $tx = $ua->build_tx($method => $url => \%h => @body);
    $tx = $ua->start($tx);
    my $res = $tx->res;
    my $json = eval { decode_json($res->body) };
    return { status => $res->code // 0, json => $json, body => $res->body,
             type => $res->headers->content_type // '',
             allow => $res->headers->header('Allow'),
             error => $tx->error };
}


sub brief {
    my ($r) = @_;
    my $b = $r->{body} // '';
    $b = substr($b, 0, 300) . '...' if length $b > 300;
    return "status $r->{status}, body: $b";
}


# the tables the module writes, each with its ORDER BY
my @TABLES = (
    users             => 'id',
    chat_sessions     => 'id',
    chat_participants => 'session_id, user_id',
    chat_invitations  => 'id',
    chat_messages     => 'session_id, seq',
);

sub db_snapshot {
    my ($dbh) = @_;
    my %s;
    my @tb = @TABLES;
    while (my ($table, $order) = splice @tb, 0, 2) {
        $s{$table} = $dbh->selectall_arrayref(
            "SELECT * FROM $table ORDER BY $order", { Slice => {} });
    }
    return \%s;
}

1;
