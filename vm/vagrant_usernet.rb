# Loaded by mntcr's Vagrantfile (vm/Vagrantfile.j2): teaches vagrant-libvirt that
# a domain on qemu's user-mode network (mgmt_attach = false, a hostfwd of the
# guest's port 22 to 127.0.0.1) is reached at 127.0.0.1.
#
# vagrant-libvirt 0.11.2 looks the address up in libvirt's DHCP leases or through
# the qemu guest agent, keyed by the domain's first NIC's MAC: with no libvirt
# NIC at all there is no MAC (the agent path fails on nil), so it would wait for
# an address forever. The port comes from config.ssh.port (Vagrant core applies
# config.ssh.host/port over the provider's answer).
require "vagrant-libvirt/driver"

module MntcrUserNet
  def get_ipaddress(domain = nil)
    return super unless @machine.provider_config.mgmt_attach == false
    domain = get_domain if domain.nil?
    domain.nil? ? nil : "127.0.0.1"
  end
end

unless VagrantPlugins::ProviderLibvirt::Driver.ancestors.include?(MntcrUserNet)
  VagrantPlugins::ProviderLibvirt::Driver.prepend(MntcrUserNet)
end
