#!/usr/bin/perl
# Peer for the QMTP benchmark: one message at a time over one connection,
# each package's reply read before the next package is sent - what the old
# Perl Net::QMTP did (it is not packaged for Debian, so this is our own
# few lines with the same behaviour).  The server is mailfront, which
# answers once per package.
#   qmtp-lockstep.pl HOST PORT FROM TO FILE...
use strict;
use warnings;
use IO::Socket::INET;

sub ns { my ($s) = @_; return length($s) . ":" . $s . "," }

my ($host, $port, $from, $to, @files) = @ARGV;
my $sock = IO::Socket::INET->new(PeerAddr => $host, PeerPort => $port, Proto => 'tcp')
	or die "connect: $@\n";
$sock->autoflush(1);
for my $f (@files) {
	open(my $fh, '<', $f) or die "$f: $!\n";
	local $/;
	my $data = <$fh>;
	close $fh;
	print $sock ns("\012" . $data) . ns($from) . ns(ns($to));
	# One reply netstring: digits, ':', payload, ','.
	my $len = '';
	while (1) {
		my $c;
		sysread($sock, $c, 1) == 1 or die "connection closed\n";
		last if $c eq ':';
		$len .= $c;
	}
	my $reply = '';
	while (length($reply) < $len + 1) {
		my $n = sysread($sock, $reply, $len + 1 - length($reply), length($reply));
		die "connection closed\n" unless $n;
	}
	die "refused: $reply\n" unless substr($reply, 0, 1) eq 'K';
}
close $sock;
