package Collab::RedisTiny;

# Redis over a socket (RESP), just enough for the tests to look at and
# poke the Redis the module relays through (t/05x, t/06x).
#
# cmd($port, @args) connects to 127.0.0.1:$port, sends one command and
# returns its reply: a status or an integer as a string, a bulk string,
# undef for a null, an array ref for an array, { error => '...' } for an
# error.  reply($s) reads one such reply from a socket the caller owns
# (for AUTH first, or a connection kept open across commands).

use strict;
use warnings;

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
    my $r = reply($s);
    CORE::close($s);
    return $r;
}


sub reply {
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
        return [map { reply($s) } 1 .. $rest];
    }
    croak "redis: bad reply '$line'";
}

1;
