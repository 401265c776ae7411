import Foundation
import KilnSupport

/// The proxy for one download, from the environment as curl reads it: `https_proxy`/`HTTPS_PROXY` for https,
/// `http_proxy` for http (not `HTTP_PROXY`, which a CGI request can set), `all_proxy`/`ALL_PROXY` for both, and
/// `no_proxy`/`NO_PROXY` (comma-separated host names, domain suffixes such as `.example.com`, or `*`) to go direct.
/// Only http:// proxies are supported; credentials in the proxy URL are sent as Basic Proxy-Authorization.
struct HTTPProxy: Equatable {
    var host: String
    var port: Int
    var authorization: String?

    static func forTarget(host: String, secure: Bool, environment: [String: String]) throws(KilnError) -> HTTPProxy? {
        let names = secure ? ["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"] : ["http_proxy", "all_proxy", "ALL_PROXY"]
        guard let (name, text) = names.lazy.compactMap({ name in environment[name].map { (name, $0) } }).first(where: { !$0.1.isEmpty }) else {
            return nil
        }
        let bypass = (environment["no_proxy"] ?? environment["NO_PROXY"] ?? "").split(separator: ",")
            .map { $0.trimmingCharacters(in: .whitespaces).lowercased() }.filter { !$0.isEmpty }
        let target = host.lowercased()
        for entry in bypass {
            if entry == "*" { return nil }
            let domain = entry.hasPrefix(".") ? String(entry.dropFirst()) : entry
            let bare = domain.split(separator: ":").first.map(String.init) ?? domain
            if target == bare || target.hasSuffix("." + bare) { return nil }
        }
        let withScheme = text.contains("://") ? text : "http://" + text
        guard let components = URLComponents(string: withScheme), let proxyHost = components.host, !proxyHost.isEmpty else {
            throw KilnError(.invalidArgument, "\(name): expected a proxy URL such as http://proxy.example:3128, found \"\(text)\"")
        }
        guard components.scheme?.lowercased() == "http" else {
            throw KilnError(.unsupported, "\(name): expected an http:// proxy, found \"\(text)\" (Kiln's downloads speak HTTP to a proxy, with CONNECT for https)")
        }
        var authorization: String?
        if let user = components.user {
            let credentials = (user.removingPercentEncoding ?? user) + ":" + ((components.password?.removingPercentEncoding) ?? "")
            authorization = "Basic " + Data(credentials.utf8).base64EncodedString()
        }
        return HTTPProxy(host: proxyHost, port: components.port ?? 80, authorization: authorization)
    }
}
