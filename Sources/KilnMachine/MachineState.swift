import KilnLibvirt
import KilnSupport

/// Where a `BuildMachine` is in its life, each state with what the machine holds in it (as apple/containerization's
/// VM states carry their data): a start acquires the fabric and the libvirt connection one by one, then the domain
/// makes the machine started; teardown releases whatever the state holds and leaves `tornDown`, which is sticky.
enum MachineState {
    /// Starting (or resuming): what is acquired so far.
    case starting(Starting)
    /// The domain exists: the guest runs, or has stopped by itself.
    case started(Started)
    /// Everything released; the machine cannot start again.
    case tornDown

    struct Starting {
        /// A Linux guest's Azure endpoints on the embedded driver (`BuildMachine.startFabric`).
        var fabric: AzureFabric?
        var connection: LibvirtConnection?
    }

    struct Started {
        let fabric: AzureFabric?
        let connection: LibvirtConnection
        let domain: LibvirtDomain
    }

    var fabric: AzureFabric? {
        switch self {
        case .starting(let starting): starting.fabric
        case .started(let started): started.fabric
        case .tornDown: nil
        }
    }

    var connection: LibvirtConnection? {
        switch self {
        case .starting(let starting): starting.connection
        case .started(let started): started.connection
        case .tornDown: nil
        }
    }

    var domain: LibvirtDomain? {
        if case .started(let started) = self { return started.domain }
        return nil
    }

    /// Changes what a starting machine holds; a machine torn down meanwhile (or already started) refuses.
    mutating func whileStarting(_ what: String, _ change: (inout Starting) -> Void) throws(KilnError) {
        guard case .starting(var starting) = self else {
            throw KilnError(.invalidState, "cannot \(what): the build VM is \(name)")
        }
        change(&starting)
        self = .starting(starting)
    }

    /// A starting machine's domain exists: it is started.
    mutating func start(_ domain: LibvirtDomain) throws(KilnError) {
        guard case .starting(let starting) = self, let connection = starting.connection else {
            throw KilnError(.invalidState, "cannot start the build VM's domain: the build VM is \(name)")
        }
        self = .started(Started(fabric: starting.fabric, connection: connection, domain: domain))
    }

    var name: String {
        switch self {
        case .starting: "starting"
        case .started: "started"
        case .tornDown: "torn down"
        }
    }
}
