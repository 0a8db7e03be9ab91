# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""mseg-cli: the mseg.fleet verbs on the control node (through the collection's playbooks) and on a host (through
the host CLI ``/usr/sbin/mseg``). See docs/cli.md."""
