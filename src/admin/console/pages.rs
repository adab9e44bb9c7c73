//! The console's pages as typed maud templates. Everything interpolated is
//! escaped by maud; no page carries a script or an external asset.

use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::chart;
use crate::admin::links::{LinkStats, LinkView};

/// Which top-level section a page belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Links,
    Reconciliation,
    Networks,
}

/// What the header shows about who is signed in.
pub struct Viewer<'a> {
    pub tenant: Option<&'a str>,
    pub csrf: &'a str,
}

pub enum Flash {
    Ok(String),
    Bad(String),
}

fn flash(f: &Option<Flash>) -> Markup {
    html! {
        @match f {
            Some(Flash::Ok(m)) => div class="flash ok" role="status" { (m) },
            Some(Flash::Bad(m)) => div class="flash bad" role="alert" { (m) },
            None => {},
        }
    }
}

fn document(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " · clickedge" }
                link rel="stylesheet" href="/console/app.css";
            }
            body { (body) }
        }
    }
}

pub fn layout(title: &str, section: Section, viewer: &Viewer<'_>, content: Markup) -> Markup {
    let current = |s: Section| (s == section).then_some("page");
    document(
        title,
        html! {
            header.top {
                div.bar {
                    a.brand href="/console/links" { span.dot {} "clickedge" }
                    nav.main aria-label="Main" {
                        a href="/console/links" aria-current=[current(Section::Links)] { "Links" }
                        a href="/console/reconciliation" aria-current=[current(Section::Reconciliation)] { "Reconciliation" }
                        @if viewer.tenant.is_none() {
                            a href="/console/networks" aria-current=[current(Section::Networks)] { "Networks" }
                        }
                    }
                    div.who {
                        span.badge { @match viewer.tenant { Some(t) => { "tenant " (t) }, None => "admin · all tenants" } }
                        form.inline method="post" action="/console/sign-out" {
                            input type="hidden" name="csrf" value=(viewer.csrf);
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
            }
            main { (content) }
        },
    )
}

pub fn sign_in(csrf: &str, error: Option<&str>) -> Markup {
    document(
        "Sign in",
        html! {
            main.signin {
                div.brand { span.dot {} "clickedge" }
                div.panel {
                    h1 { "Sign in" }
                    p.sub { "Use an API token from " code { "clickedge token create" } "." }
                    @if let Some(e) = error { div class="flash bad" role="alert" { (e) } }
                    form method="post" action="/console/sign-in" {
                        input type="hidden" name="csrf" value=(csrf);
                        div.field {
                            label for="token" { "API token" }
                            input #token type="password" name="token" autocomplete="current-password" required autofocus;
                        }
                        button type="submit" { "Sign in" }
                    }
                }
            }
        },
    )
}

pub struct LinksPage<'a> {
    pub links: &'a [LinkView],
    pub q: &'a str,
    /// The tenant an admin picked ("" for every tenant).
    pub tenant: &'a str,
    pub next: Option<String>,
    pub first_page: bool,
    pub flash: Option<Flash>,
    pub admin: bool,
}

/// An RFC 3339 UTC time as `2026-12-04 20:55 UTC`.
fn when(rfc3339: &str) -> String {
    match (rfc3339.get(..10), rfc3339.get(11..16)) {
        (Some(d), Some(t)) => format!("{d} {t} UTC"),
        _ => rfc3339.to_owned(),
    }
}

fn plural(n: u64, one: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {one}s")
    }
}

fn tags(t: &[String]) -> Markup {
    html! { span.tags { @for tag in t { span.badge { (tag) } } } }
}

pub fn links(viewer: &Viewer<'_>, page: LinksPage<'_>) -> Markup {
    let more = |cursor: &str| {
        let mut q = form_urlencoded::Serializer::new(String::new());
        if !page.q.is_empty() {
            q.append_pair("q", page.q);
        }
        if !page.tenant.is_empty() {
            q.append_pair("tenant", page.tenant);
        }
        q.append_pair("cursor", cursor);
        format!("/console/links?{}", q.finish())
    };
    layout(
        "Links",
        Section::Links,
        viewer,
        html! {
            h1 { "Links" }
            p.sub { "Short links, where they go, and how they are doing." }
            (flash(&page.flash))
            div.panel {
                h2 { "New link" }
                form method="post" action="/console/links" {
                    input type="hidden" name="csrf" value=(viewer.csrf);
                    div.row {
                        div.grow.field {
                            label for="destination" { "Destination" }
                            input #destination type="url" name="destination" placeholder="https://example.com/landing" required;
                        }
                        div.field {
                            label for="code" { "Code " span.hint { "(optional)" } }
                            input #code type="text" name="code" pattern="[A-Za-z0-9-]{1,64}" placeholder="auto";
                        }
                        div.field {
                            label for="tags" { "Tags " span.hint { "(comma-separated)" } }
                            input #tags type="text" name="tags" placeholder="spring, email";
                        }
                        @if page.admin {
                            div.field {
                                label for="tenant" { "Tenant" }
                                input #tenant type="text" name="tenant" placeholder="default";
                            }
                        }
                        div.field { button type="submit" { "Create link" } }
                    }
                }
            }
            div.panel {
                form.row method="get" action="/console/links" role="search" {
                    div.grow {
                        label for="q" { "Search " span.hint { "code, tag or destination" } }
                        input #q type="search" name="q" value=(page.q);
                    }
                    @if page.admin {
                        div {
                            label for="tenant-filter" { "Tenant " span.hint { "(empty: all)" } }
                            input #tenant-filter type="text" name="tenant" value=(page.tenant);
                        }
                    }
                    div { button.quiet type="submit" { "Search" } }
                }
                div.table-wrap {
                    @if page.links.is_empty() {
                        p.empty { @if page.q.is_empty() { "No links yet. Create one above." } @else { "No link matches “" (page.q) "”." } }
                    } @else {
                        table {
                            thead { tr {
                                th { "Code" } th { "Destination" }
                                @if page.admin { th { "Tenant" } }
                                th { "Tags" } th { "Status" } th { "Created" }
                            } }
                            tbody {
                                @for l in page.links {
                                    tr {
                                        td { a.mono href=(format!("/console/links/{}", l.code)) { (l.code) } }
                                        td { span.dest { (l.destination) } }
                                        @if page.admin { td { (l.tenant) } }
                                        td { (tags(&l.tags)) }
                                        td { @if l.disabled { span.badge.off { "disabled" } } @else { span.badge.on { "live" } } }
                                        td { (l.created_at.get(..10).unwrap_or(&l.created_at)) }
                                    }
                                }
                            }
                        }
                    }
                }
                div.pager {
                    span { (page.links.len()) " shown" }
                    span {
                        @if !page.first_page { a href=(if page.q.is_empty() { "/console/links".to_owned() } else { format!("/console/links?q={}", form_urlencoded::byte_serialize(page.q.as_bytes()).collect::<String>()) }) { "← First page" } " " }
                        @if let Some(c) = &page.next { a href=(more(c)) { "Next page →" } }
                    }
                }
            }
        },
    )
}

pub fn link(
    viewer: &Viewer<'_>,
    l: &LinkView,
    stats: &LinkStats,
    hourly: bool,
    flash_msg: Option<Flash>,
) -> Markup {
    let revenue = stats
        .revenue
        .iter()
        .map(|(cur, v)| format!("{v} {cur}"))
        .collect::<Vec<_>>()
        .join(", ");
    layout(
        &l.code,
        Section::Links,
        viewer,
        html! {
            p { a href="/console/links" { "← Links" } }
            h1.mono { (l.code) }
            p.sub { a href=(l.short_url) { (l.short_url) } " → " span.dest { (l.destination) } }
            (flash(&flash_msg))
            div.kpis {
                div.kpi { div.k { "Clicks" } div.v #kpi-clicks { (stats.totals.clicks) } }
                div.kpi { div.k { "Human" } div.v { (stats.totals.human_clicks) } }
                div.kpi { div.k { "Bots" } div.v { (stats.totals.bot_clicks) } }
                div.kpi { div.k { "Unique visitors" } div.v { (stats.totals.unique_visitors) } }
                div.kpi { div.k { "Conversions" } div.v { (stats.conversions) } }
                div.kpi { div.k { "Revenue" } div.v.money title=(revenue) { @if revenue.is_empty() { "—" } @else { (revenue) } } }
            }
            div.grid2 {
                div.panel {
                    div.row {
                        h2.grow { @if hourly { "Clicks per hour, last 48 hours" } @else { "Clicks per day, last 30 days" } }
                        div {
                            @if hourly { a href=(format!("/console/links/{}", l.code)) { "Daily" } }
                            @else { a href=(format!("/console/links/{}?interval=hour", l.code)) { "Hourly" } }
                        }
                    }
                    (chart::clicks(&stats.series, hourly))
                    div.legend {
                        span { i.human {} "human clicks" }
                        span { i.bot {} "bot clicks" }
                        span { i.visitors {} "unique visitors" }
                    }
                }
                div.panel {
                    h2 { "Details" }
                    dl.facts {
                        dt { "Status" } dd { @if l.disabled { span.badge.off { "disabled" } } @else { span.badge.on { "live" } } }
                        dt { "Tenant" } dd { (l.tenant) }
                        dt { "Redirect" } dd { (l.redirect) }
                        dt { "Tags" } dd { (tags(&l.tags)) }
                        dt { "Query passthrough" } dd { @if l.passthrough { "on" } @else { "off" } }
                        dt { "Created" } dd { (when(&l.created_at)) }
                        dt { "Expires" } dd { (l.expires_at.as_deref().map_or("never".to_owned(), when)) }
                    }
                    form method="post" action=(format!("/console/links/{}/edit", l.code)) class="spaced" {
                        input type="hidden" name="csrf" value=(viewer.csrf);
                        div.field {
                            label for="edit-destination" { "Destination" }
                            input #edit-destination type="url" name="destination" value=(l.destination) required;
                        }
                        div.field {
                            label for="edit-tags" { "Tags " span.hint { "(comma-separated)" } }
                            input #edit-tags type="text" name="tags" value=(l.tags.join(", "));
                        }
                        button type="submit" { "Save" }
                    }
                    form method="post" action=(format!("/console/links/{}/disable", l.code)) class="spaced" {
                        input type="hidden" name="csrf" value=(viewer.csrf);
                        input type="hidden" name="disabled" value=(if l.disabled { "false" } else { "true" });
                        button.quiet type="submit" { @if l.disabled { "Enable link" } @else { "Disable link" } }
                    }
                }
            }
            (routing(l, stats))
        },
    )
}

/// A breakdown's entries, most clicks first (then by name).
fn by_clicks(m: &std::collections::BTreeMap<String, u64>) -> Vec<(&str, u64)> {
    let mut rows: Vec<(&str, u64)> = m.iter().map(|(k, n)| (k.as_str(), *n)).collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    rows
}

/// The link's rules and variants with each variant's clicks, and the
/// country and device breakdowns; nothing for a plain link never clicked.
fn routing(l: &LinkView, stats: &LinkStats) -> Markup {
    let (countries, devices) = (
        by_clicks(&stats.routing.countries),
        by_clicks(&stats.routing.devices),
    );
    let total_weight: u64 = l.variants.iter().map(|v| u64::from(v.weight)).sum();
    html! {
        @if !l.rules.is_empty() || !l.variants.is_empty() {
            div.panel #routing {
                h2 { "Routing" }
                @if !l.rules.is_empty() {
                    h3 { "Rules " span.hint { "(first match wins)" } }
                    div.table-wrap { table {
                        thead { tr { th.num { "#" } th { "If" } th { "Destination" } } }
                        tbody { @for (i, r) in l.rules.iter().enumerate() {
                            tr {
                                td.num { (i) }
                                td.mono { (serde_json::to_string(&r.when).unwrap_or_default()) }
                                td.dest { (r.destination) }
                            }
                        } }
                    } }
                }
                @if !l.variants.is_empty() {
                    h3 { "Variants " span.hint { "(when no rule matched; sticky per visitor)" } }
                    div.table-wrap { table {
                        thead { tr {
                            th.num { "#" } th { "Destination" } th.num { "Weight" }
                            th.num { "Clicks" } th.num { "Human clicks" }
                        } }
                        tbody { @for (i, v) in l.variants.iter().enumerate() {
                            @let seen = stats.routing.variants.get(i);
                            tr {
                                td.num { (i) }
                                td.dest { (v.destination) }
                                td.num { (v.weight) " (" (u64::from(v.weight) * 100 / total_weight.max(1)) " %)" }
                                td.num { (seen.map_or(0, |s| s.clicks)) }
                                td.num { (seen.map_or(0, |s| s.human_clicks)) }
                            }
                        } }
                    } }
                }
            }
        }
        @if !countries.is_empty() || !devices.is_empty() {
            div.grid2 {
                div.panel #countries {
                    h2 { "Countries" }
                    @if countries.is_empty() { p.empty { "No country known for these clicks." } }
                    @else { table { tbody { @for (c, n) in &countries { tr { td.mono { (c) } td.num { (n) } } } } } }
                }
                div.panel #devices {
                    h2 { "Devices" }
                    @if devices.is_empty() { p.empty { "No device known for these clicks." } }
                    @else { table { tbody { @for (d, n) in &devices { tr { td { (d) } td.num { (n) } } } } } }
                }
            }
        }
    }
}

/// `GET /v1/reconciliation`'s answer as tables (read as JSON: its row
/// types keep their fields to the postback module).
pub fn reconciliation(viewer: &Viewer<'_>, data: &serde_json::Value, network: &str) -> Markup {
    let days = data["days"].as_array().cloned().unwrap_or_default();
    let money = |v: &serde_json::Value| -> String {
        v.as_object()
            .map(|m| {
                m.iter()
                    .map(|(c, a)| format!("{} {c}", a.as_str().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "—".into())
    };
    layout(
        "Reconciliation",
        Section::Reconciliation,
        viewer,
        html! {
            h1 { "Reconciliation" }
            p.sub { "Postbacks and conversions per network and UTC day, last 30 days — compare with each network's own report." }
            div.panel {
                form.row method="get" action="/console/reconciliation" {
                    div.grow {
                        label for="network" { "Network " span.hint { "(empty: all)" } }
                        input #network type="text" name="network" value=(network);
                    }
                    div { button.quiet type="submit" { "Show" } }
                }
                div.table-wrap {
                    @if days.is_empty() {
                        p.empty { "No postbacks in this range." }
                    } @else {
                        table {
                            thead { tr {
                                th { "Day" } th { "Network" } th.num { "Received" } th.num { "Accepted" }
                                th.num { "Duplicates" } th.num { "Unknown clicks" } th.num { "Unmatched" }
                                th.num { "Conversions" } th { "Revenue" }
                            } }
                            tbody {
                                @for d in &days {
                                    tr {
                                        td { (d["day"].as_str().unwrap_or("")) }
                                        td { (d["network"].as_str().unwrap_or("")) }
                                        @for k in ["received", "accepted", "duplicates", "unknown_clicks", "unmatched", "conversions"] {
                                            td.num { (d[k].as_u64().unwrap_or(0)) }
                                        }
                                        td { (money(&d["revenue"])) }
                                    }
                                    @for l in d["links"].as_array().into_iter().flatten() {
                                        tr {
                                            td {} td { "↳ " a.mono href=(format!("/console/links/{}", l["code"].as_str().unwrap_or(""))) { (l["code"].as_str().unwrap_or("")) } }
                                            td.num colspan="5" { (plural(l["human_clicks"].as_u64().unwrap_or(0), "human click")) }
                                            td.num { (l["conversions"].as_u64().unwrap_or(0)) }
                                            td { (money(&l["revenue"])) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// The postback networks (admins): settings, never a secret, except the
/// one just made by a rotation, shown once.
pub fn networks(
    viewer: &Viewer<'_>,
    list: &[crate::postback::networks::NetworkRecord],
    shown_once: Option<&(String, String)>,
) -> Markup {
    layout(
        "Networks",
        Section::Networks,
        viewer,
        html! {
            h1 { "Networks" }
            p.sub { "Affiliate networks that send postbacks. Add and configure them with " code { "clickedge network" } "; rotate a secret here." }
            @if let Some((name, secret)) = shown_once {
                div class="flash ok" role="status" {
                    "New secret for " strong { (name) } " — copy it now, it is not shown again: "
                    code #new-secret { (secret) }
                    br;
                    "The previous secret keeps verifying during the rotation grace period."
                }
            }
            div.panel {
                div.table-wrap {
                    @if list.is_empty() {
                        p.empty { "No networks yet: " code { "clickedge network add NAME" } "." }
                    } @else {
                        table {
                            thead { tr {
                                th { "Network" } th { "Auth" } th { "Allowed IPs" } th { "Currency" }
                                th.num { "Window" } th { "Previous secret until" } th { "Updated" } th {}
                            } }
                            tbody {
                                @for n in list {
                                    tr {
                                        td { strong { (n.name) } }
                                        td { (serde_json::to_value(&n.settings.auth).ok().and_then(|v| v.as_array().map(|a| a.iter().filter_map(|m| m.as_str().map(str::to_owned)).collect::<Vec<_>>().join(", "))).unwrap_or_default()) }
                                        td { @if n.settings.allowed_ips.is_empty() { "any" } @else { (n.settings.allowed_ips.join(", ")) } }
                                        td { (n.settings.currency) }
                                        td.num { (n.settings.attribution_window_secs / 86_400) " d" }
                                        td { (n.previous_valid_until.map(|t| when(&crate::time::rfc3339(t.timestamp_millis()))).unwrap_or_else(|| "—".into())) }
                                        td { (when(&crate::time::rfc3339(n.updated_at.timestamp_millis()))) }
                                        td {
                                            form.inline method="post" action=(format!("/console/networks/{}/rotate", n.name)) {
                                                input type="hidden" name="csrf" value=(viewer.csrf);
                                                button.quiet type="submit" { "Rotate secret" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// A page for an error status (404, 403, …), with a way back.
pub fn problem(title: &str, message: &str) -> Markup {
    document(
        title,
        html! {
            main.signin {
                div.brand { span.dot {} "clickedge" }
                div.panel {
                    h1 { (title) }
                    p { (message) }
                    p { a href="/console/links" { "Back to the console" } }
                }
            }
        },
    )
}

/// The stylesheet, served at `/console/app.css`.
pub const STYLESHEET: PreEscaped<&str> = PreEscaped(include_str!("app.css"));
