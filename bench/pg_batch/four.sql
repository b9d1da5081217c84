\set m random(1, 50)
WITH k AS (SELECT 'T'||nextval('s') AS t, 'o' || (:m*4+g) AS o, g AS n FROM generate_series(0,3) g),
i AS (INSERT INTO inbox (event_type, transaction_id, refund_id, notification_id, openid, resource, status, note, received_at) SELECT 'MALL_TRANSACTION.SUCCESS', k.t, '', 'n'||k.t, k.o, repeat('r', 400), 'applied', '', 1 FROM k ON CONFLICT (event_type, transaction_id, refund_id) DO NOTHING RETURNING transaction_id),
ok AS (SELECT k.* FROM k JOIN i ON i.transaction_id = k.t),
m AS (INSERT INTO members (openid, authorized, auth_type, code, balance, updated_at) SELECT ok.o, NULL::BIGINT, '', '', 5, 1 FROM ok ON CONFLICT (openid) DO UPDATE SET balance = excluded.balance, updated_at = excluded.updated_at),
l AS (INSERT INTO ledger (openid, kind, transaction_id, refund_id, points, balance_after, day, rule, created_at) SELECT ok.o, 'credit', ok.t, '', 5, 5, 20261207, 'rule', 1 FROM ok ORDER BY n),
p AS (INSERT INTO payments (transaction_id, openid, appid, mchid, shop_number, amount, credited_points, refunded_amount, entitled_debit, not_credited, created_at) SELECT ok.t, ok.o, 'a', 'm', 's', 100, 5, 0, 0, 0, 1 FROM ok),
o AS (INSERT INTO outbox (transaction_id, method, path, payload, state, last_error, due_at, created_at) SELECT ok.t, 'POST', '/v3/x', repeat('p', 300), 'pending', NULL, 1, 1 FROM ok RETURNING id, state)
SELECT array_agg(n) FROM ok;
