import KilnSupport

/// The provisioning media Azure attaches to a new VM: an ISO 9660 volume with `ovf-env.xml` (the user, the SSH
/// key, the host name), as cloud-init's Azure datasource and the Linux agent read it.
public enum OVFEnvironment {
    public static func xml(username: String, hostname: String, publicKey: String) -> String {
        let user = XMLText.escape(username)
        return """
        <?xml version="1.0" encoding="utf-8"?>
        <ns0:Environment xmlns:ns0="http://schemas.dmtf.org/ovf/environment/1" xmlns:ns1="http://schemas.microsoft.com/windowsazure" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
          <ns1:ProvisioningSection>
            <ns1:Version>1.0</ns1:Version>
            <ns1:LinuxProvisioningConfigurationSet>
              <ns1:ConfigurationSetType>LinuxProvisioningConfiguration</ns1:ConfigurationSetType>
              <ns1:HostName>\(XMLText.escape(hostname))</ns1:HostName>
              <ns1:UserName>\(user)</ns1:UserName>
              <ns1:DisableSshPasswordAuthentication>true</ns1:DisableSshPasswordAuthentication>
              <ns1:SSH>
                <ns1:PublicKeys>
                  <ns1:PublicKey>
                    <ns1:Path>/home/\(user)/.ssh/authorized_keys</ns1:Path>
                    <ns1:Value>\(XMLText.escape(publicKey))</ns1:Value>
                  </ns1:PublicKey>
                </ns1:PublicKeys>
              </ns1:SSH>
            </ns1:LinuxProvisioningConfigurationSet>
          </ns1:ProvisioningSection>
          <ns1:PlatformSettingsSection>
            <ns1:Version>1.0</ns1:Version>
            <ns1:PlatformSettings>
              <ns1:KmsServerHostname>kms.core.windows.net</ns1:KmsServerHostname>
              <ns1:ProvisionGuestAgent>true</ns1:ProvisionGuestAgent>
              <ns1:GuestAgentPackageName xsi:nil="true"/>
              <ns1:PreprovisionedVm>false</ns1:PreprovisionedVm>
            </ns1:PlatformSettings>
          </ns1:PlatformSettingsSection>
        </ns0:Environment>

        """
    }
}
