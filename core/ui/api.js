// The admin API client: every route the dashboard calls, in one table, and one fetch wrapper.
//
// Each entry is [METHOD, "/admin/v1/path"] with `{name}` placeholders. The end-to-end suite
// reads this table and checks every entry against the gateway's /admin/v1/openapi.json, so a
// route the dashboard calls cannot drift from the API.

export const ROUTES = {
  whoami: ["GET", "/admin/v1/whoami"],
  keys: ["GET", "/admin/v1/keys"],
  createKey: ["POST", "/admin/v1/keys"],
  key: ["GET", "/admin/v1/keys/{id}"],
  updateKey: ["PATCH", "/admin/v1/keys/{id}"],
  revokeKey: ["POST", "/admin/v1/keys/{id}/revoke"],
  unrevokeKey: ["POST", "/admin/v1/keys/{id}/unrevoke"],
  rotateKey: ["POST", "/admin/v1/keys/{id}/rotate"],
  keyRotations: ["GET", "/admin/v1/keys/{id}/rotations"],
  teams: ["GET", "/admin/v1/teams"],
  createTeam: ["POST", "/admin/v1/teams"],
  updateTeam: ["PATCH", "/admin/v1/teams/{id}"],
  deleteTeam: ["DELETE", "/admin/v1/teams/{id}"],
  users: ["GET", "/admin/v1/users"],
  createUser: ["POST", "/admin/v1/users"],
  updateUser: ["PATCH", "/admin/v1/users/{id}"],
  deleteUser: ["DELETE", "/admin/v1/users/{id}"],
  budgets: ["GET", "/admin/v1/budgets"],
  createBudget: ["POST", "/admin/v1/budgets"],
  updateBudget: ["PATCH", "/admin/v1/budgets/{id}"],
  deleteBudget: ["DELETE", "/admin/v1/budgets/{id}"],
  budgetUsage: ["GET", "/admin/v1/budgets/{id}/usage"],
  quotas: ["GET", "/admin/v1/quotas"],
  usage: ["GET", "/admin/v1/usage"],
  usageRequest: ["GET", "/admin/v1/usage/{request_id}"],
  aggregate: ["GET", "/admin/v1/usage/aggregate"],
  audit: ["GET", "/admin/v1/audit"],
  policy: ["GET", "/admin/v1/policy"],
  reloadPolicy: ["POST", "/admin/v1/policy/reload"],
  mcpServers: ["GET", "/admin/v1/mcp-servers"],
  providers: ["GET", "/admin/v1/providers"],
  models: ["GET", "/admin/v1/models"],
};

const TOKEN = "tollgate.admin_token";

/** The admin token of this tab (sessionStorage: gone when the tab closes). */
export function token() {
  return sessionStorage.getItem(TOKEN);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN, value);
  else sessionStorage.removeItem(TOKEN);
}

/** An error answer of the admin API: HTTP status, stable code and message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Fills `{name}` placeholders (URL-encoded) and appends the query (empty values dropped). */
export function url(route, params = {}, query = {}) {
  const path = ROUTES[route][1].replace(/\{(\w+)\}/g, (_, name) => {
    if (params[name] === undefined) throw new Error(`missing ${name} for ${route}`);
    return encodeURIComponent(params[name]);
  });
  const search = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) {
    if (v !== undefined && v !== null && v !== "") search.set(k, String(v));
  }
  const qs = search.toString();
  return qs ? `${path}?${qs}` : path;
}

let onUnauthorized = () => {};

/** Called when the API answers 401 (the token is wrong or was removed). */
export function whenUnauthorized(callback) {
  onUnauthorized = callback;
}

/**
 * Calls `route` with path `params`, `query` and an optional JSON `body`; resolves to the parsed
 * JSON answer (null for 204), rejects with an ApiError.
 */
export async function call(route, { params, query, body } = {}) {
  const [method] = ROUTES[route];
  const headers = { Accept: "application/json" };
  const current = token();
  if (current) headers.Authorization = `Bearer ${current}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url(route, params, query), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
      redirect: "error",
    });
  } catch (e) {
    throw new ApiError(0, "network_error", `the gateway cannot be reached (${e.message})`);
  }
  const text = await response.text();
  let json = null;
  if (text) {
    try {
      json = JSON.parse(text);
    } catch {
      json = null;
    }
  }
  if (!response.ok) {
    const err = json && json.error ? json.error : {};
    const error = new ApiError(
      response.status,
      err.code || `http_${response.status}`,
      err.message || text.slice(0, 200) || response.statusText,
    );
    if (response.status === 401) onUnauthorized(error);
    throw error;
  }
  return json;
}
