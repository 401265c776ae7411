import Foundation

/// What a libvirt connection URI names: the driver, and whether the daemon is on this machine.
public enum LibvirtURI {
    /// The host a URI names (`qemu+ssh://root@lab1/system` → `lab1`); nil for a daemon on this machine
    /// (`qemu:///system`, `qemu+unix:///system`, `qemu:///session`, `qemu:///embed?root=…`).
    public static func remoteHost(_ uri: String) -> String? {
        guard let components = URLComponents(string: uri), let host = components.host, !host.isEmpty else { return nil }
        return host
    }

    /// A system daemon on this machine (`qemu:///system`, `qemu+unix:///system`): its QEMU runs as its own user
    /// (Debian: libvirt-qemu) unless the domain says otherwise.
    public static func isLocalSystem(_ uri: String) -> Bool {
        guard let components = URLComponents(string: uri), remoteHost(uri) == nil,
              let scheme = components.scheme, scheme == "qemu" || scheme == "qemu+unix" else { return false }
        return components.path == "/system"
    }
}
