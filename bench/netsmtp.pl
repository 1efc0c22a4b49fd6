#!/usr/bin/perl
# Peer for the benchmark: Perl's core Net::SMTP, lock-step, every message
# over one connection (as the Perl modules mailspool replaces did).
#   netsmtp.pl HOST PORT FROM TO FILE...
use strict;
use warnings;
use Net::SMTP;

my ($host, $port, $from, $to, @files) = @ARGV;
my $smtp = Net::SMTP->new($host, Port => $port, Timeout => 600, Hello => 'bench.test')
	or die "connect: $@\n";
for my $f (@files) {
	open(my $fh, '<', $f) or die "$f: $!\n";
	local $/;
	my $data = <$fh>;
	close $fh;
	$smtp->mail($from) or die "MAIL: " . $smtp->message;
	$smtp->to($to) or die "RCPT: " . $smtp->message;
	$smtp->data() or die "DATA: " . $smtp->message;
	$smtp->datasend($data);
	$smtp->dataend() or die "dot: " . $smtp->message;
}
$smtp->quit;
